//! `lhttp bench chat`: many clients, as in a real chat. N connections in rooms of R
//! (connection `i` is in room `i / R`, channel `chat-<room>`; when R does not divide N the
//! last room holds the rest, and the report says so). Each connection subscribes to its room
//! and waits for the server's confirmation; once every one has, each publishes one message per
//! interval into its room, one WebSocket frame per write as real clients do, and receives every
//! message of its room, its own included: N × R / interval deliveries a second are offered.
//!
//! Sends are staggered uniformly: connection `i` sends first at `i × interval / N` after a
//! common start, then once every interval. A late tick is caught up at once (tokio's
//! `MissedTickBehavior::Burst`), so the offered rate is exact and what each connection sends is
//! known in advance; the report says how far behind its schedule the client fell at worst.
//! One task per connection does both, its timer and its socket in one `select!`: the client
//! shares the machine's cores with the server and must stay lean.
//!
//! Each body is the send time (nanoseconds since an `Instant` that senders and receivers share,
//! all in this process), the sender's index and its sequence number, then a filler to `--size`
//! derived from both, so that a message damaged or mixed with another is caught. Every
//! connection keeps, per member of its room, the next sequence number it expects, and counts
//! what arrives lost, duplicated, out of order (per sender, the only order promised) or
//! corrupted (including a message of another room) over the whole run, warm-up included.
//!
//! Figures count the measured window only: messages scheduled from the end of `--warmup` to
//! the end of `--duration`, their deliveries and their latency (receive time − send time);
//! deliveries/s run from the window's start to its last delivery, and `--pid`'s server CPU
//! from the window's start to the moment every connection had everything it expected. After
//! the last publish the run waits for the rest; what has not come `--timeout` later is lost.
//! Latencies go into one HDR histogram in batches of [`BATCH`] per connection, so no delivery
//! takes a lock.
//!
//! The server's limits stay on (docs/limits.md): one message a second per connection is far
//! under the message rate, and by default the connections come from as many loopback source
//! addresses (127.0.0.1 … 127.0.0.N) as keep each at [`MOST_PER_ADDRESS`] or fewer, under
//! lhttpd's default of 1000 connections per address. `--nats` runs the same scenario against
//! a nats-server's WebSocket port (`SUB`/`PUB`/`MSG` on subject `chat-<room>`).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    ops::Range,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::{
    Counter, Filler, Output, Socket, Tls, cpu_time, is_rate_refusal, latency, nats, parse_digits,
    payload_sized, progress, push_padded, request, round2,
    sources::{self, Route},
    with_refusals,
};

/// Width of the send time (nanoseconds) at the start of each body.
const TIME_WIDTH: usize = 20;
/// Width of the sender's index that follows it.
const SENDER_WIDTH: usize = 6;
/// Width of the sender's sequence number that follows that.
const SEQ_WIDTH: usize = 10;
/// The smallest body a chat message can carry.
const MIN_CHAT_SIZE: usize = TIME_WIDTH + SENDER_WIDTH + SEQ_WIDTH;

/// By default no source address holds more connections than this: under lhttpd's default
/// per-address limit of 1000, with room for a browser or two on the same machine.
pub(crate) const MOST_PER_ADDRESS: usize = 900;

/// Latencies a connection collects before it adds them to the shared histogram: a lock per 64
/// deliveries rather than per delivery, and 512 bytes per connection.
const BATCH: usize = 64;

/// From the moment every connection is subscribed to the first send: time to start every
/// connection's task (10,000 of them take some milliseconds).
const LEAD: Duration = Duration::from_millis(200);

/// What `lhttp bench chat` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Chat {
    pub url: String,
    pub count: usize,
    pub room_size: usize,
    pub interval: Duration,
    pub duration: Duration,
    pub warmup: Duration,
    pub size: usize,
    /// How many 127.0.0.x source addresses to spread over; `None`: as many as keep each at
    /// [`MOST_PER_ADDRESS`] or fewer.
    pub source_addrs: Option<usize>,
    /// Drive a nats-server's WebSocket port with the NATS protocol instead of lhttpd.
    pub nats: bool,
    /// The server's process id, to report its CPU time per delivery.
    pub pid: Option<u32>,
    pub tls: Tls,
    pub timeout: Duration,
    pub output: Output,
}

/// When each connection sends: connection `i` first at `start + offset(i)`, then every
/// interval, `total[i]` messages in all, of which the first `warm[i]` before the measured
/// window.
struct Schedule {
    start: tokio::time::Instant,
    interval: Duration,
    count: usize,
    warm: Vec<u64>,
    total: Vec<u64>,
}

impl Schedule {
    fn new(
        start: tokio::time::Instant,
        count: usize,
        interval: Duration,
        warmup: Duration,
        duration: Duration,
    ) -> Schedule {
        let mut schedule = Schedule {
            start,
            interval,
            count,
            warm: Vec::with_capacity(count),
            total: Vec::with_capacity(count),
        };
        let (warm_end, end) = (warmup.as_nanos(), (warmup + duration).as_nanos());
        for i in 0..count {
            let offset = schedule.offset(i).as_nanos();
            let period = interval.as_nanos();
            schedule.warm.push(sends_before(offset, period, warm_end));
            schedule.total.push(sends_before(offset, period, end));
        }
        schedule
    }

    /// When connection `i` sends first, after the start.
    fn offset(&self, i: usize) -> Duration {
        let nanos = self.interval.as_nanos() * i as u128 / self.count as u128;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// What connection `i` sends in the measured window.
    fn measured(&self, i: usize) -> u64 {
        self.total[i] - self.warm[i]
    }
}

/// How many sends a connection makes before `until` (ns after the start) when its first is at
/// `offset` and the others follow every `period` (all in ns).
fn sends_before(offset: u128, period: u128, until: u128) -> u64 {
    if until <= offset {
        return 0;
    }
    u64::try_from((until - offset - 1) / period + 1).unwrap_or(u64::MAX)
}

/// The connections of the room of connection `i`.
fn room_of(i: usize, room_size: usize, count: usize) -> Range<usize> {
    let start = i / room_size * room_size;
    start..(start + room_size).min(count)
}

/// The body of message `seq` of connection `sender`, sent at `sent_ns`.
fn chat_body(sent_ns: u64, sender: usize, seq: u64, filler: &Filler, out: &mut Vec<u8>) {
    push_padded(out, sent_ns, TIME_WIDTH);
    push_padded(out, sender as u64, SENDER_WIDTH);
    push_padded(out, seq, SEQ_WIDTH);
    out.extend_from_slice(filler.of(seq + sender as u64));
}

/// What a received body says.
#[derive(Debug, PartialEq, Eq)]
struct Said {
    sent_ns: u64,
    sender: usize,
    seq: u64,
    /// The filler is the one of this sender and number.
    intact: bool,
}

/// Reads a chat body; `None` if it is not one (too short, or its numbers are not digits).
fn read_body(body: &[u8], filler: &Filler) -> Option<Said> {
    if body.len() != MIN_CHAT_SIZE + filler.len() {
        return None;
    }
    let sent_ns = parse_digits(body.get(..TIME_WIDTH))?;
    let sender = parse_digits(body.get(TIME_WIDTH..TIME_WIDTH + SENDER_WIDTH))?;
    let seq = parse_digits(body.get(TIME_WIDTH + SENDER_WIDTH..MIN_CHAT_SIZE))?;
    Some(Said {
        sent_ns,
        sender: sender as usize,
        seq,
        intact: filler.is_intact(&body[MIN_CHAT_SIZE..], seq + sender),
    })
}

/// The latencies of the whole run, and how many have been added (for the progress bar).
struct Latencies {
    histogram: Mutex<Histogram<u64>>,
    added: Counter,
}

impl Latencies {
    /// Adds `batch` (nanoseconds) and empties it.
    fn add(&self, batch: &mut Vec<u64>) {
        if batch.is_empty() {
            return;
        }
        let mut histogram = self
            .histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for &nanos in batch.iter() {
            histogram.saturating_record(nanos.max(1_000));
        }
        drop(histogram);
        self.added.0.fetch_add(batch.len() as u64, Relaxed);
        batch.clear();
    }
}

/// What one connection saw and did.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Messages sent in the measured window.
    published: u64,
    /// Deliveries of messages of the measured window (each counted once).
    deliveries: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    corrupted: u64,
    /// Messages the server refused with 429 (its per-connection rate limit).
    refused: u64,
    /// 1 when the connection ended before the run did.
    disconnected: u64,
    /// When the last delivery of the measured window arrived (ns after the shared base).
    last_delivery_ns: u64,
    /// How far behind its schedule a send went at worst.
    late_max: Duration,
}

impl Seen {
    fn add(&mut self, other: &Seen) {
        self.published += other.published;
        self.deliveries += other.deliveries;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.corrupted += other.corrupted;
        self.refused += other.refused;
        self.disconnected += other.disconnected;
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.late_max = self.late_max.max(other.late_max);
    }
}

/// The result of `lhttp bench chat`.
#[derive(Debug)]
pub(crate) struct ChatReport {
    nats: bool,
    connections: usize,
    rooms: usize,
    room_size: usize,
    /// The last room's size, when it is smaller.
    last_room: Option<usize>,
    interval: Duration,
    duration: Duration,
    warmup: Duration,
    size: usize,
    offered_per_sec: f64,
    /// Deliveries the measured window's messages owe: each to every member of its room.
    expected: u64,
    deliveries_per_sec: f64,
    seen: Seen,
    /// Nanoseconds.
    histogram: Histogram<u64>,
    per_source: BTreeMap<IpAddr, usize>,
    /// The server's CPU time over the measured window, when its pid was given.
    server_cpu: Option<Duration>,
}

impl ChatReport {
    pub(crate) fn is_clean(&self) -> bool {
        let s = &self.seen;
        s.lost + s.duplicated + s.out_of_order + s.corrupted + s.disconnected == 0
    }

    /// Server CPU nanoseconds per delivery, when its pid was given.
    fn server_ns_per_delivery(&self) -> Option<f64> {
        self.server_cpu
            .map(|cpu| cpu.as_nanos() as f64 / self.seen.deliveries.max(1) as f64)
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let s = &self.seen;
        let mut report = serde_json::json!({
            "scenario": "chat",
            "protocol": if self.nats { "nats" } else { "lhttp" },
            "connections": self.connections,
            "rooms": self.rooms,
            "room_size": self.room_size,
            "last_room_size": self.last_room.unwrap_or(self.room_size),
            "interval_ms": self.interval.as_millis() as u64,
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "size": self.size,
            "offered_deliveries_per_sec": self.offered_per_sec.round() as u64,
            "published": s.published,
            "expected_deliveries": self.expected,
            "deliveries": s.deliveries,
            "deliveries_per_sec": self.deliveries_per_sec.round(),
            "lost": s.lost,
            "duplicated": s.duplicated,
            "out_of_order": s.out_of_order,
            "corrupted": s.corrupted,
            "disconnected": s.disconnected,
            "rate_limited": s.refused,
            "send_late_max_ms": round2(s.late_max.as_secs_f64() * 1e3),
            "source_addrs": self.per_source.len(),
            "connections_per_source": sources::per_source_json(&self.per_source),
            "server_cpu_ms": self.server_cpu.map(|cpu| cpu.as_millis() as u64),
            "server_cpu_ns_per_delivery": self.server_ns_per_delivery().map(f64::round),
        });
        if let Some(fields) = report.as_object_mut() {
            fields.extend(latency::quantiles_json(&self.histogram));
        }
        report
    }

    pub(crate) fn table(&self) -> String {
        let s = &self.seen;
        let rooms = match self.last_room {
            Some(last) => format!(
                "{} rooms of {} (the last of {last})",
                self.rooms, self.room_size
            ),
            None => format!("{} rooms of {}", self.rooms, self.room_size),
        };
        let from = if self.per_source.is_empty() {
            "over a Unix socket".to_owned()
        } else {
            let each: Vec<String> = self
                .per_source
                .iter()
                .map(|(ip, n)| format!("{ip} {n}"))
                .collect();
            format!(
                "from {} source address(es): {}",
                self.per_source.len(),
                each.join(", ")
            )
        };
        let mut table = format!(
            "setup      {} connections in {rooms}, {}; {from}\n\
             offered    {:>12.0} deliveries/s (a message per connection every {} ms), \
             {:.1} s measured after {:.1} s of warm-up\n\
             published  {:>12}\n\
             deliveries {:>12} of {} expected, {:.0}/s\n\
             latency    {}\n\
             sends      at most {:.1} ms behind schedule\n\
             lost {}  duplicated {}  out of order {}  corrupted {}  disconnected {}",
            self.connections,
            if self.nats { "NATS" } else { "lhttp" },
            self.offered_per_sec,
            self.interval.as_millis(),
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64(),
            s.published,
            s.deliveries,
            self.expected,
            self.deliveries_per_sec,
            latency::quantiles_line(&self.histogram),
            s.late_max.as_secs_f64() * 1e3,
            s.lost,
            s.duplicated,
            s.out_of_order,
            s.corrupted,
            s.disconnected
        );
        if let (Some(cpu), Some(per)) = (self.server_cpu, self.server_ns_per_delivery()) {
            table.push_str(&format!(
                "\nserver CPU {:>12.0} ms  ({per:.0} ns per delivery)",
                cpu.as_secs_f64() * 1e3
            ));
        }
        with_refusals(table, s.refused)
    }
}

/// Runs `lhttp bench chat`.
pub(crate) async fn chat(opts: Chat) -> Result<ChatReport> {
    if opts.size < MIN_CHAT_SIZE {
        bail!("--size must be at least {MIN_CHAT_SIZE} bytes");
    }
    if opts.count == 0 || opts.count >= 10usize.pow(SENDER_WIDTH as u32) {
        bail!("-n must be between 1 and 999999");
    }
    if opts.room_size == 0 || opts.room_size > opts.count {
        bail!("--room-size must be between 1 and -n ({})", opts.count);
    }
    if opts.interval.is_zero() {
        bail!("--interval-ms must be at least 1");
    }
    let sends = (opts.warmup + opts.duration).as_nanos() / opts.interval.as_nanos() + 1;
    if sends >= 10u128.pow(SEQ_WIDTH as u32) {
        bail!("--warmup and --duration make too many messages per connection for --interval-ms");
    }
    let (count, room_size) = (opts.count, opts.room_size);
    sources::raise_open_files()?;
    let route = Route::new(
        &opts.url,
        count,
        opts.source_addrs,
        MOST_PER_ADDRESS.min(sources::ports_per_address()),
    )?;

    let bar = progress::bar(opts.output.progress, count as u64, "connections subscribed");
    let (nats, timeout) = (opts.nats, opts.timeout);
    let opened = sources::open_all(&route, count, &opts.tls, timeout, &bar, |i, socket| {
        subscribe(socket, i / room_size, i, nats, timeout)
    })
    .await?;
    bar.finish_and_clear();
    let per_source = sources::per_source(opened.iter().map(|(_, local)| local));

    let base = Instant::now();
    let start = tokio::time::Instant::now() + LEAD;
    let schedule = Arc::new(Schedule::new(
        start,
        count,
        opts.interval,
        opts.warmup,
        opts.duration,
    ));
    let measured_from = start + opts.warmup;
    let give_up = measured_from + opts.duration + opts.timeout;
    let filler = Arc::new(Filler::new(opts.size - MIN_CHAT_SIZE));
    let latencies = Arc::new(Latencies {
        histogram: Mutex::new(latency::histogram()),
        added: Counter::default(),
    });
    let mut tasks = Vec::with_capacity(count);
    for (index, (socket, _)) in opened.into_iter().enumerate() {
        let room = room_of(index, room_size, count);
        let subject = format!("chat-{}", index / room_size);
        let (head, tail) = if nats {
            (
                nats::publish_head(&subject, opts.size).into_bytes(),
                nats::TAIL,
            )
        } else {
            (
                format!("LHTTP/1.0 chat\r\npublish:{subject}\r\n\r\n").into_bytes(),
                &b""[..],
            )
        };
        tasks.push(tokio::spawn(chatter(Chatter {
            index,
            socket,
            nats,
            room,
            head,
            tail,
            size: opts.size,
            schedule: schedule.clone(),
            filler: filler.clone(),
            base,
            give_up,
            latencies: latencies.clone(),
        })));
    }

    // The bar runs over the publishing time; its message counts the deliveries measured.
    let run = opts.warmup + opts.duration;
    let bar = progress::bar(opts.output.progress, run.as_millis() as u64, "ms");
    let ticker = {
        let (bar, latencies) = (bar.clone(), latencies.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            loop {
                ticks.tick().await;
                let elapsed = tokio::time::Instant::now().saturating_duration_since(start);
                bar.set_position(elapsed.min(run).as_millis() as u64);
                bar.set_message(format!(
                    "{} deliveries measured",
                    latencies.added.0.load(Relaxed)
                ));
            }
        })
    };

    tokio::time::sleep_until(measured_from).await;
    let cpu_before = opts.pid.map(cpu_time).transpose()?;
    let mut seen = Seen::default();
    let mut sockets = Vec::with_capacity(count);
    for task in tasks {
        let (one, socket) = task.await.context("a connection's task failed")?;
        seen.add(&one);
        sockets.push(socket);
    }
    let server_cpu = match (opts.pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    // The connections stay open until the server's CPU is read: closing 10,000 costs it too.
    drop(sockets);
    ticker.abort();
    bar.finish_and_clear();

    let rooms = count.div_ceil(room_size);
    let last_room = Some(count - (rooms - 1) * room_size).filter(|&last| last != room_size);
    let expected: u64 = (0..rooms)
        .map(|r| {
            let members = room_of(r * room_size, room_size, count);
            let published: u64 = members.clone().map(|m| schedule.measured(m)).sum();
            published * members.len() as u64
        })
        .sum();
    let offered_per_sec: f64 = (0..rooms)
        .map(|r| room_of(r * room_size, room_size, count).len().pow(2) as f64)
        .sum::<f64>()
        / opts.interval.as_secs_f64();
    let window_start_ns = measured_from
        .into_std()
        .saturating_duration_since(base)
        .as_nanos() as u64;
    let window = Duration::from_nanos(seen.last_delivery_ns.saturating_sub(window_start_ns));
    let histogram = std::mem::replace(
        &mut *latencies
            .histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
        latency::histogram(),
    );
    Ok(ChatReport {
        nats,
        connections: count,
        rooms,
        room_size,
        last_room,
        interval: opts.interval,
        duration: opts.duration,
        warmup: opts.warmup,
        size: opts.size,
        offered_per_sec,
        expected,
        deliveries_per_sec: seen.deliveries as f64 / window.as_secs_f64().max(1e-9),
        seen,
        histogram,
        per_source,
        server_cpu,
    })
}

/// Subscribes connection `i` to room `room` and waits for the server to confirm: lhttpd's `ok`
/// to a request-id, nats-server's `PONG` to a `PING` after the `SUB`.
async fn subscribe(
    mut socket: Socket,
    room: usize,
    i: usize,
    nats: bool,
    timeout: Duration,
) -> Result<Socket> {
    let subject = format!("chat-{room}");
    if nats {
        nats::handshake(&mut socket, Some(&subject), timeout).await?;
    } else {
        let id = format!("chat-{i}");
        request(
            &mut socket,
            format!("LHTTP/1.0 chat\r\nsubscribe:{subject}\r\nrequest-id:{id}\r\n\r\n"),
            &id,
            timeout,
        )
        .await?;
    }
    Ok(socket)
}

/// One chatting connection and what it shares with the others.
struct Chatter {
    index: usize,
    socket: Socket,
    /// Deliveries are NATS `MSG`s, publishes `PUB`s.
    nats: bool,
    room: Range<usize>,
    /// The start of every message this connection sends, up to its body.
    head: Vec<u8>,
    /// What follows each body (the NATS protocol's CRLF).
    tail: &'static [u8],
    size: usize,
    schedule: Arc<Schedule>,
    filler: Arc<Filler>,
    /// The clock every send time is read against.
    base: Instant,
    /// When to stop waiting for deliveries.
    give_up: tokio::time::Instant,
    latencies: Arc<Latencies>,
}

/// What one connection has received so far, checked against its room's senders.
struct Tally {
    seen: Seen,
    /// The first sender of the room.
    first: usize,
    /// The next sequence number expected from each member of the room.
    next: Vec<u64>,
    /// Messages of the room not yet received: the sum of what each member sends in all minus
    /// its `next`.
    outstanding: u64,
    /// Latencies (ns) not yet added to the shared histogram.
    batch: Vec<u64>,
}

impl Tally {
    fn on(&mut self, said: Option<Said>, now_ns: u64, schedule: &Schedule, latencies: &Latencies) {
        let seen = &mut self.seen;
        let Some(said) = said else {
            seen.corrupted += 1;
            return;
        };
        // A sender outside the room (a message of another room) or a number it never sends.
        let member = said
            .sender
            .checked_sub(self.first)
            .filter(|&m| m < self.next.len());
        let Some(member) = member.filter(|_| said.seq < schedule.total[said.sender]) else {
            seen.corrupted += 1;
            return;
        };
        let next = &mut self.next[member];
        if said.seq < *next {
            seen.duplicated += 1;
            return;
        }
        if said.seq > *next {
            seen.lost += said.seq - *next;
            seen.out_of_order += 1;
        }
        self.outstanding = self.outstanding.saturating_sub(said.seq + 1 - *next);
        *next = said.seq + 1;
        if !said.intact {
            seen.corrupted += 1;
        }
        if said.seq >= schedule.warm[said.sender] {
            seen.deliveries += 1;
            seen.last_delivery_ns = now_ns;
            self.batch.push(now_ns.saturating_sub(said.sent_ns));
            if self.batch.len() == BATCH {
                latencies.add(&mut self.batch);
            }
        }
    }
}

/// Publishes on schedule and checks every delivery until this connection has sent all it
/// should and received all its room sent (or the run gives up); returns what it saw, and the
/// connection, so that it stays open until every other one is done.
async fn chatter(c: Chatter) -> (Seen, Socket) {
    let Chatter {
        index,
        mut socket,
        nats,
        room,
        head,
        tail,
        size,
        schedule,
        filler,
        base,
        give_up,
        latencies,
    } = c;
    let sends = schedule.total[index];
    let mut tally = Tally {
        seen: Seen::default(),
        first: room.start,
        next: vec![0; room.len()],
        outstanding: room.clone().map(|m| schedule.total[m]).sum(),
        batch: Vec::with_capacity(BATCH),
    };
    let mut ticks =
        tokio::time::interval_at(schedule.start + schedule.offset(index), schedule.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let give_up = tokio::time::sleep_until(give_up);
    tokio::pin!(give_up);
    let mut messages = nats::Messages::default();
    let mut seq = 0u64;
    while seq < sends || tally.outstanding > 0 {
        tokio::select! {
            biased;
            due = ticks.tick(), if seq < sends => {
                let now = Instant::now();
                let seen = &mut tally.seen;
                seen.late_max = seen.late_max.max(now.saturating_duration_since(due.into_std()));
                let mut message = Vec::with_capacity(head.len() + size + tail.len());
                message.extend_from_slice(&head);
                let sent_ns = now.saturating_duration_since(base).as_nanos() as u64;
                chat_body(sent_ns, index, seq, &filler, &mut message);
                message.extend_from_slice(tail);
                let frame = if nats {
                    Frame::binary(message)
                } else {
                    // A browser sends its chat messages as text; the message is ASCII.
                    Frame::text(String::from_utf8(message).unwrap_or_else(|e| {
                        String::from_utf8_lossy(e.as_bytes()).into_owned()
                    }))
                };
                let sent = tokio::select! {
                    biased;
                    sent = socket.send(frame) => sent.is_ok(),
                    () = &mut give_up => false,
                };
                if !sent {
                    tally.seen.disconnected = 1;
                    break;
                }
                if seq >= schedule.warm[index] {
                    tally.seen.published += 1;
                }
                seq += 1;
            }
            frame = socket.next() => {
                let Some(Ok(frame)) = frame else {
                    tally.seen.disconnected = 1;
                    break;
                };
                let now_ns = base.elapsed().as_nanos() as u64;
                if !matches!(frame, Frame::Text(_) | Frame::Binary(_)) {
                    continue;
                }
                let data = frame.into_data();
                if !nats {
                    if is_rate_refusal(&data) {
                        tally.seen.refused += 1;
                        continue;
                    }
                    let said = payload_sized(&data, size).and_then(|body| read_body(body, &filler));
                    tally.on(said, now_ns, &schedule, &latencies);
                    continue;
                }
                // NATS: any number of protocol messages per frame, and a server PING to answer.
                messages.feed(&data);
                let mut ping = false;
                while let Some(item) = messages.next_item() {
                    match item {
                        nats::Item::Payload(body) => {
                            tally.on(read_body(&body, &filler), now_ns, &schedule, &latencies);
                        }
                        nats::Item::Ping => ping = true,
                        nats::Item::Error(_) => tally.seen.corrupted += 1,
                        nats::Item::Pong | nats::Item::Other => {}
                    }
                }
                if ping {
                    let _ = socket.send(Frame::binary(&b"PONG\r\n"[..])).await;
                }
            }
            () = &mut give_up => break,
        }
    }
    latencies.add(&mut tally.batch);
    // What never came is lost.
    tally.seen.lost += tally.outstanding;
    (tally.seen, socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_bodies_round_trip_and_damage_is_caught() {
        let filler = &Filler::new(64 - MIN_CHAT_SIZE);
        let mut body = Vec::new();
        chat_body(123_456_789, 4242, 17, filler, &mut body);
        assert_eq!(body.len(), 64);
        let said = Said {
            sent_ns: 123_456_789,
            sender: 4242,
            seq: 17,
            intact: true,
        };
        assert_eq!(read_body(&body, filler), Some(said));
        let last = body.len() - 1;
        body[last] ^= 1;
        assert_eq!(read_body(&body, filler).map(|s| s.intact), Some(false));
        assert_eq!(read_body(&body[..50], filler), None);
        // Another sender's filler under this sender's number is caught.
        let mut other = Vec::new();
        chat_body(1, 4242, 17, filler, &mut other);
        other[TIME_WIDTH + SENDER_WIDTH - 1] = b'3';
        assert_eq!(read_body(&other, filler).map(|s| s.intact), Some(false));
    }

    #[test]
    fn every_connection_sends_what_its_schedule_says() {
        // 4 connections, one message every 100 ms each, staggered by 25 ms: 10 each in 1 s.
        let start = tokio::time::Instant::now();
        let schedule = Schedule::new(
            start,
            4,
            Duration::from_millis(100),
            Duration::from_millis(150),
            Duration::from_secs(1),
        );
        assert_eq!(schedule.offset(3), Duration::from_millis(75));
        // Before 150 ms: sends at 0 and 100 ms (connection 0), 25 and 125 (1), 50 (2), 75 (3).
        assert_eq!(schedule.warm, [2, 2, 1, 1]);
        assert_eq!(schedule.total, [12, 12, 11, 11]);
        assert!((0..4).all(|i| schedule.measured(i) == 10));
        assert_eq!(sends_before(0, 10, 0), 0);
        assert_eq!(sends_before(0, 10, 1), 1);
        assert_eq!(sends_before(0, 10, 10), 1);
        assert_eq!(sends_before(0, 10, 11), 2);
        assert_eq!(sends_before(5, 10, 5), 0);
    }

    #[test]
    fn rooms_are_consecutive_connections_and_the_last_holds_the_rest() {
        assert_eq!(room_of(0, 100, 10_000), 0..100);
        assert_eq!(room_of(9_999, 100, 10_000), 9_900..10_000);
        assert_eq!(room_of(250, 100, 260), 200..260);
    }

    #[test]
    fn a_tally_counts_each_kind_of_trouble() {
        let start = tokio::time::Instant::now();
        let schedule = Schedule::new(
            start,
            4,
            Duration::from_millis(100),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        let latencies = Latencies {
            histogram: Mutex::new(latency::histogram()),
            added: Counter::default(),
        };
        let mut tally = Tally {
            seen: Seen::default(),
            first: 2,
            next: vec![0; 2],
            outstanding: 20,
            batch: Vec::new(),
        };
        let said = |sender, seq| {
            Some(Said {
                sent_ns: 1_000,
                sender,
                seq,
                intact: true,
            })
        };
        tally.on(said(2, 0), 5_000, &schedule, &latencies);
        tally.on(said(2, 0), 6_000, &schedule, &latencies);
        tally.on(said(3, 2), 7_000, &schedule, &latencies);
        tally.on(said(1, 0), 8_000, &schedule, &latencies);
        tally.on(said(2, 10), 9_000, &schedule, &latencies);
        tally.on(None, 9_000, &schedule, &latencies);
        let seen = tally.seen;
        assert_eq!(seen.deliveries, 2, "{seen:?}");
        assert_eq!(seen.duplicated, 1, "{seen:?}");
        assert_eq!((seen.lost, seen.out_of_order), (2, 1), "{seen:?}");
        // Another room's sender, a number beyond the schedule, and garbage.
        assert_eq!(seen.corrupted, 3, "{seen:?}");
        assert_eq!(tally.outstanding, 20 - 1 - 3);
        assert_eq!(seen.last_delivery_ns, 7_000);
        latencies.add(&mut tally.batch);
        let histogram = latencies.histogram.lock().unwrap();
        assert_eq!(histogram.len(), 2);
    }
}
