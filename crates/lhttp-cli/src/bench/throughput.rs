//! `lhttp bench throughput`: P publishers, S subscribers, C channels, every delivery checked.
//!
//! Subscriber `i` subscribes to channel `i mod C`; publisher `p` sends its `k`-th message to
//! channel `(p + k) mod C`. Each body starts with the publisher's number and a sequence number
//! per (publisher, channel), then a filler derived from that number, so a subscriber can tell
//! lost, duplicated, out-of-order (per publisher: the only order the protocol promises) and
//! corrupted messages apart. When a publisher is done it sends an `end` marker on every channel;
//! a subscriber stops after the markers of all publishers (or after `timeout` of silence).
//!
//! Flow control: publishers keep at most `--window` messages in flight ahead of the slowest
//! subscriber, so that the measurement shows the server's pace rather than its slow-consumer
//! policy (a subscriber more than `limits.outbound_queue` behind would be disconnected).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::{
    Counter, Filler, Output, REFUSED_HINT, Socket, Tls, connect, cpu_time, drain_refusals, nats,
    parse_digits, payload_sized, plot, progress, push_padded, request, round2, take_refusals,
    with_refusals,
};

/// Width of the publisher number at the start of each body.
const PUB_WIDTH: usize = 4;
/// Width of the sequence number that follows it.
const SEQ_WIDTH: usize = 12;
/// The smallest body a message can carry.
pub(crate) const MIN_SIZE: usize = PUB_WIDTH + SEQ_WIDTH;
/// How often the delivered count is sampled (for the plot and the progress bar).
const SAMPLE: Duration = Duration::from_millis(100);

/// How much to publish.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Amount {
    /// This many messages in all, shared among the publishers.
    Count(u64),
    /// As many as the server takes during this time.
    Duration(Duration),
}

/// What `lhttp bench throughput` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Throughput {
    pub url: String,
    pub sub_url: String,
    pub publishers: usize,
    pub subscribers: usize,
    pub channels: usize,
    pub amount: Amount,
    pub size: usize,
    pub channel: String,
    pub window: u64,
    /// Write each message with its own system call, as browsers and most client libraries
    /// do, instead of a batch per write.
    pub write_each: bool,
    /// A pause after each message (sporadic traffic); implies `write_each`.
    pub pause: Option<Duration>,
    /// Drive a nats-server's WebSocket port with the NATS protocol instead of lhttpd.
    pub nats: bool,
    /// The server's process id, to report its CPU time per delivery.
    pub pid: Option<u32>,
    pub tls: Tls,
    pub timeout: Duration,
    pub output: Output,
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    received: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    corrupted: u64,
}

impl Seen {
    fn add(&mut self, other: &Seen) {
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.corrupted += other.corrupted;
    }
}

/// The result of a run.
#[derive(Debug)]
pub(crate) struct Report {
    pub publishers: usize,
    pub subscribers: usize,
    pub channels: usize,
    pub published: u64,
    pub published_per_sec: f64,
    pub delivered_per_sec: f64,
    pub megabytes_per_sec: f64,
    pub elapsed: Duration,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub corrupted: u64,
    /// Messages the server refused with 429 (its per-connection rate limit).
    pub refused: u64,
    /// The server's CPU time (user + system) from the first publish to the last delivery,
    /// when its pid was given.
    pub server_cpu: Option<Duration>,
    /// (seconds since the start, deliveries per second over the sample before).
    pub samples: Vec<(f64, f64)>,
}

impl Report {
    pub(crate) fn is_clean(&self) -> bool {
        self.lost + self.duplicated + self.out_of_order + self.corrupted == 0
    }

    /// Server CPU nanoseconds per delivery, when its pid was given.
    fn server_ns_per_delivery(&self) -> Option<f64> {
        self.server_cpu
            .map(|cpu| cpu.as_nanos() as f64 / self.deliveries.max(1) as f64)
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "throughput",
            "publishers": self.publishers,
            "subscribers": self.subscribers,
            "channels": self.channels,
            "published": self.published,
            "published_per_sec": self.published_per_sec.round(),
            "delivered_per_sec": self.delivered_per_sec.round(),
            "megabytes_per_sec": round2(self.megabytes_per_sec),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "deliveries": self.deliveries,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "corrupted": self.corrupted,
            "rate_limited": self.refused,
            "server_cpu_ms": self.server_cpu.map(|cpu| cpu.as_millis() as u64),
            "server_cpu_ns_per_delivery": self.server_ns_per_delivery().map(f64::round),
        })
    }

    pub(crate) fn table(&self) -> String {
        let mut table = self.counts();
        if let (Some(cpu), Some(per)) = (self.server_cpu, self.server_ns_per_delivery()) {
            table.push_str(&format!(
                "\nserver CPU {:>12.0} ms  ({per:.0} ns per delivery)",
                cpu.as_secs_f64() * 1e3
            ));
        }
        with_refusals(table, self.refused)
    }

    fn counts(&self) -> String {
        format!(
            "setup      {} publisher(s) -> {} subscriber(s) on {} channel(s)\n\
             published  {:>12.0} msg/s  ({} messages)\n\
             delivered  {:>12.0} msg/s  ({:.1} MB/s)\n\
             elapsed    {:>12.3} s\ndeliveries {:>12}\n\
             lost {}  duplicated {}  out of order {}  corrupted {}",
            self.publishers,
            self.subscribers,
            self.channels,
            self.published_per_sec,
            self.published,
            self.delivered_per_sec,
            self.megabytes_per_sec,
            self.elapsed.as_secs_f64(),
            self.deliveries,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.corrupted
        )
    }
}

/// The body of message `seq` of publisher `publisher`, whose filler is `filler`.
fn body(publisher: usize, seq: u64, filler: &Filler, out: &mut Vec<u8>) {
    push_padded(out, publisher as u64, PUB_WIDTH);
    push_padded(out, seq, SEQ_WIDTH);
    out.extend_from_slice(filler.of(seq));
}

/// What a received frame is.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// A warm-up probe.
    Probe,
    /// Publisher `.0` is done.
    End(usize),
    /// Message (publisher, seq, intact).
    Data(usize, u64, bool),
    /// Not a message of this run, or damaged beyond reading.
    Garbage,
}

/// What `data` is, for bodies of `MIN_SIZE` + `filler` bytes.
fn classify(data: &[u8], filler: &Filler) -> Received {
    let Some(payload) = payload_sized(data, MIN_SIZE + filler.len()) else {
        return Received::Garbage;
    };
    classify_body(payload, filler)
}

/// What a message with body `payload` is.
fn classify_body(payload: &[u8], filler: &Filler) -> Received {
    if payload.starts_with(b"probe") {
        return Received::Probe;
    }
    if let Some(rest) = payload.strip_prefix(b"end") {
        return match parse_digits(rest.get(..PUB_WIDTH)) {
            Some(publisher) => Received::End(publisher as usize),
            None => Received::Garbage,
        };
    }
    let publisher = parse_digits(payload.get(..PUB_WIDTH));
    let seq = parse_digits(payload.get(PUB_WIDTH..MIN_SIZE));
    match (publisher, seq) {
        (Some(publisher), Some(seq)) => Received::Data(
            publisher as usize,
            seq,
            filler.is_intact(&payload[MIN_SIZE..], seq),
        ),
        _ => Received::Garbage,
    }
}

/// The name of channel `c` of `count`: the bare name when there is one.
fn channel_name(base: &str, c: usize, count: usize) -> String {
    if count == 1 {
        base.to_owned()
    } else {
        format!("{base}-{c}")
    }
}

/// Runs the scenario and reports.
pub(crate) async fn throughput(opts: Throughput) -> Result<Report> {
    if opts.size < MIN_SIZE {
        bail!("--size must be at least {MIN_SIZE} bytes");
    }
    if opts.publishers == 0 || opts.publishers >= 10usize.pow(PUB_WIDTH as u32) {
        bail!("--publishers must be between 1 and 9999");
    }
    if opts.channels == 0 || opts.subscribers < opts.channels {
        bail!("every channel needs a subscriber: --subscribers must be at least --channels (>= 1)");
    }
    let (publishers, channels) = (opts.publishers, opts.channels);
    let heads: Arc<Vec<String>> = Arc::new(
        (0..channels)
            .map(|c| {
                let name = channel_name(&opts.channel, c, channels);
                if opts.nats {
                    nats::publish_head(&name, opts.size)
                } else {
                    format!("LHTTP/1.0 bench\r\npublish:{name}\r\n\r\n")
                }
            })
            .collect(),
    );
    // A whole message of `payload` to channel `c` (warm-up probes, end markers).
    let marker = |c: usize, payload: &str| -> Vec<u8> {
        let name = channel_name(&opts.channel, c, channels);
        if opts.nats {
            nats::publish(&name, payload.as_bytes())
        } else {
            format!("LHTTP/1.0 bench\r\npublish:{name}\r\n\r\n{payload}").into_bytes()
        }
    };

    let mut subscribers = Vec::with_capacity(opts.subscribers);
    for i in 0..opts.subscribers {
        let mut socket = connect(&opts.sub_url, &opts.tls, opts.timeout).await?;
        let id = format!("bench-sub-{i}");
        let name = channel_name(&opts.channel, i % channels, channels);
        if opts.nats {
            nats::handshake(&mut socket, Some(&name), opts.timeout).await?;
        } else {
            request(
                &mut socket,
                format!("LHTTP/1.0 bench\r\nsubscribe:{name}\r\nrequest-id:{id}\r\n\r\n"),
                &id,
                opts.timeout,
            )
            .await?;
        }
        subscribers.push(socket);
    }
    let mut sockets = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        let mut socket = connect(&opts.url, &opts.tls, opts.timeout).await?;
        if opts.nats {
            nats::handshake(&mut socket, None, opts.timeout).await?;
        }
        sockets.push(socket);
    }

    // Deliveries per subscriber (flow control, progress, samples) and messages sent per channel.
    let received: Arc<Vec<Counter>> =
        Arc::new((0..opts.subscribers).map(|_| Counter::default()).collect());
    let sent: Arc<Vec<Counter>> = Arc::new((0..channels).map(|_| Counter::default()).collect());
    let warmed = Arc::new(Counter::default());
    let progress = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for (index, socket) in subscribers.into_iter().enumerate() {
        let (received, warmed) = (received.clone(), warmed.clone());
        let (size, idle) = (opts.size, opts.timeout);
        let progress = progress.clone();
        tasks.push(tokio::spawn(subscriber(Subscriber {
            socket,
            nats: opts.nats,
            index,
            publishers,
            size,
            idle,
            received,
            warmed,
            progress,
        })));
    }

    // Warm-up: probes until every subscriber got one, so that a subscription that still has to
    // cross a cluster is in place before the clock starts.
    let deadline = Instant::now() + opts.timeout;
    while (warmed.0.load(Relaxed) as usize) < opts.subscribers {
        if Instant::now() > deadline {
            bail!("warm-up: not every subscriber received a probe in time");
        }
        for c in 0..heads.len() {
            sockets[0].feed(Frame::binary(marker(c, "probe"))).await?;
        }
        sockets[0].flush().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The bar counts deliveries (about n * S / C) for a count, milliseconds for a duration.
    let (len, unit, by_count) = match opts.amount {
        Amount::Count(n) => (
            n * opts.subscribers as u64 / channels as u64,
            "deliveries",
            true,
        ),
        Amount::Duration(d) => (d.as_millis() as u64, "ms", false),
    };
    let bar = progress::bar(opts.output.progress, len, unit);

    let cpu_before = opts.pid.map(cpu_time).transpose()?;
    let started = Instant::now();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (received, stop, bar) = (received.clone(), stop_sampling.clone(), bar.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut ticks = tokio::time::interval(SAMPLE);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            let (mut last_count, mut last_at) = (0u64, started);
            while !stop.load(Relaxed) {
                ticks.tick().await;
                let count: u64 = received.iter().map(|c| c.0.load(Relaxed)).sum();
                let now = Instant::now();
                let rate = (count - last_count) as f64 / (now - last_at).as_secs_f64().max(1e-9);
                samples.push(((now - started).as_secs_f64(), rate));
                bar.set_position(if by_count {
                    count
                } else {
                    (now - started).as_millis() as u64
                });
                bar.set_message(progress::rate(rate));
                (last_count, last_at) = (count, now);
            }
            samples
        })
    };

    let mut publishing = Vec::with_capacity(publishers);
    for (p, socket) in sockets.into_iter().enumerate() {
        let quota = match opts.amount {
            Amount::Count(n) => {
                Some(n / publishers as u64 + u64::from((p as u64) < n % publishers as u64))
            }
            Amount::Duration(_) => None,
        };
        let until = match opts.amount {
            Amount::Duration(d) => Some(started + d),
            Amount::Count(_) => None,
        };
        publishing.push(tokio::spawn(publisher(Publisher {
            socket,
            index: p,
            publishers,
            quota,
            until,
            size: opts.size,
            window: opts.window,
            write_each: opts.write_each || opts.pause.is_some(),
            pause: opts.pause,
            stall: opts.timeout,
            heads: heads.clone(),
            tail: if opts.nats { nats::TAIL } else { b"" },
            ends: (0..channels)
                .map(|c| marker(c, &format!("end{p:0PUB_WIDTH$}")))
                .collect(),
            received: received.clone(),
            sent: sent.clone(),
            progress: progress.clone(),
        })));
    }
    // Messages sent by each publisher to each channel.
    let mut sent_by = Vec::with_capacity(publishers);
    let mut published_at = started;
    let mut refused = 0;
    for task in publishing {
        let (per_channel, at, refusals) = task.await??;
        sent_by.push(per_channel);
        published_at = published_at.max(at);
        refused += refusals;
    }
    let published: u64 = sent_by.iter().flatten().sum();

    let mut total = Seen::default();
    let mut finished = started;
    for (s, task) in tasks.into_iter().enumerate() {
        let (mut seen, expected, at) = task.await.context("a subscriber failed")?;
        for (p, next) in expected.iter().enumerate() {
            seen.lost += sent_by[p][s % channels].saturating_sub(*next);
        }
        total.add(&seen);
        finished = finished.max(at);
    }
    let server_cpu = match (opts.pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    stop_sampling.store(true, Relaxed);
    let samples = sampler.await.unwrap_or_default();
    bar.finish_and_clear();

    let elapsed = finished.saturating_duration_since(started);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let message_len = (heads[0].len() + opts.size) as f64;
    let report = Report {
        publishers,
        subscribers: opts.subscribers,
        channels,
        published,
        published_per_sec: published as f64
            / published_at
                .saturating_duration_since(started)
                .as_secs_f64()
                .max(1e-9),
        delivered_per_sec: total.received as f64 / secs,
        megabytes_per_sec: message_len * total.received as f64 / secs / 1e6,
        elapsed,
        deliveries: total.received,
        lost: total.lost,
        duplicated: total.duplicated,
        out_of_order: total.out_of_order,
        corrupted: total.corrupted,
        refused,
        server_cpu,
        samples,
    };
    if let Some(path) = &opts.output.plot {
        plot::throughput(
            path,
            &report.samples,
            &format!(
                "lhttp bench throughput: {} -> {} on {} channel(s), {} B bodies",
                publishers, opts.subscribers, channels, opts.size
            ),
        )?;
    }
    Ok(report)
}

/// One subscriber: checks every frame until every publisher's end marker came (or `idle` of
/// silence), and returns what it saw, the next sequence number it expected from each publisher
/// (what was sent beyond that is lost) and when the last message arrived (at its end marker;
/// within 64 deliveries when markers are missing).
async fn subscriber(s: Subscriber) -> (Seen, Vec<u64>, Instant) {
    let Subscriber {
        mut socket,
        nats,
        index,
        publishers,
        size,
        idle,
        received,
        warmed,
        progress,
    } = s;
    let filler = Filler::new(size - MIN_SIZE);
    let mut tally = Tally {
        seen: Seen::default(),
        expected: vec![0u64; publishers],
        ended: vec![false; publishers],
        ends: 0,
        warm: false,
        last: Instant::now(),
        index,
        received,
        warmed,
        progress,
    };
    let mut messages = nats::Messages::default();
    // One timer for the whole run, re-armed only when it fires after frames came: a timeout
    // per frame cost this loop a runtime lookup and a clock read per delivery (a fifth of the
    // client's time at 100 subscribers). So silence ends the run after `idle` to 2 × `idle`.
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    let mut heard = false;
    while tally.ends < publishers {
        let frame = tokio::select! {
            biased;
            frame = socket.next() => match frame {
                Some(Ok(frame)) => frame,
                // The connection is gone: what is missing is counted as lost below.
                _ => break,
            },
            () = &mut silence => {
                if !heard {
                    break;
                }
                heard = false;
                silence.as_mut().reset(tokio::time::Instant::now() + idle);
                continue;
            }
        };
        heard = true;
        if !matches!(frame, Frame::Text(_) | Frame::Binary(_)) {
            continue;
        }
        let data = frame.into_data();
        if !nats {
            tally.on(classify(&data, &filler));
            continue;
        }
        // NATS: any number of protocol messages per frame, and a server PING to answer.
        messages.feed(&data);
        let mut ping = false;
        while let Some(item) = messages.next_item() {
            match item {
                nats::Item::Payload(body) => tally.on(classify_body(&body, &filler)),
                nats::Item::Ping => ping = true,
                nats::Item::Error(_) => tally.seen.corrupted += 1,
                nats::Item::Pong | nats::Item::Other => {}
            }
        }
        if ping {
            let _ = socket.send(Frame::binary(&b"PONG\r\n"[..])).await;
        }
    }
    (tally.seen, tally.expected, tally.last)
}

/// What one subscriber has seen so far, and where it reports it.
struct Tally {
    seen: Seen,
    /// The next sequence number expected from each publisher.
    expected: Vec<u64>,
    ended: Vec<bool>,
    ends: usize,
    warm: bool,
    /// When the last message arrived (within 64 deliveries; exact at end markers).
    last: Instant,
    index: usize,
    received: Arc<Vec<Counter>>,
    warmed: Arc<Counter>,
    progress: Arc<Notify>,
}

impl Tally {
    fn on(&mut self, received: Received) {
        let seen = &mut self.seen;
        match received {
            Received::Probe => {
                if !self.warm {
                    self.warm = true;
                    self.warmed.0.fetch_add(1, Relaxed);
                }
            }
            Received::End(p) => match self.ended.get_mut(p) {
                Some(done @ false) => {
                    *done = true;
                    self.ends += 1;
                    // A publisher's end marker follows its last message on the same stream.
                    self.last = Instant::now();
                }
                _ => seen.corrupted += 1,
            },
            Received::Data(p, seq, intact) => {
                // The clock is read every 64 deliveries (and at each end marker), not per
                // delivery: it was an eighth of the client's time.
                if seen.received % 64 == 0 {
                    self.last = Instant::now();
                }
                let Some(next) = self.expected.get_mut(p) else {
                    seen.corrupted += 1;
                    return;
                };
                seen.received += 1;
                if !intact {
                    seen.corrupted += 1;
                }
                if seq == *next {
                    *next += 1;
                } else if seq > *next {
                    seen.lost += seq - *next;
                    seen.out_of_order += 1;
                    *next = seq + 1;
                } else {
                    seen.duplicated += 1;
                }
                self.received[self.index].0.fetch_add(1, Relaxed);
                if seen.received % NOTIFY_EVERY == 0 {
                    self.progress.notify_waiters();
                }
            }
            Received::Garbage => seen.corrupted += 1,
        }
    }
}

/// One subscribing connection and what it reports to.
struct Subscriber {
    socket: Socket,
    /// Deliveries are NATS `MSG`s, not lhttp messages.
    nats: bool,
    index: usize,
    publishers: usize,
    size: usize,
    idle: Duration,
    received: Arc<Vec<Counter>>,
    warmed: Arc<Counter>,
    /// Woken as deliveries come in, so that a publisher with a full window resumes at once.
    progress: Arc<Notify>,
}

/// A subscriber wakes the publishers every this many deliveries: often enough to keep the
/// window full, seldom enough to cost nothing per message.
const NOTIFY_EVERY: u64 = 256;

/// One publishing connection and what it needs to pace itself.
struct Publisher {
    socket: Socket,
    index: usize,
    publishers: usize,
    quota: Option<u64>,
    until: Option<Instant>,
    size: usize,
    window: u64,
    /// Flush after every message: one frame per write.
    write_each: bool,
    /// Wait this long after each message.
    pause: Option<Duration>,
    /// Give up when the subscribers make no progress for this long.
    stall: Duration,
    /// The start of a message to each channel, up to its body.
    heads: Arc<Vec<String>>,
    /// What follows each body (the NATS protocol's CRLF).
    tail: &'static [u8],
    /// This publisher's end marker for each channel.
    ends: Vec<Vec<u8>>,
    received: Arc<Vec<Counter>>,
    sent: Arc<Vec<Counter>>,
    progress: Arc<Notify>,
}

/// Publishes until the quota or the deadline, then sends the end markers. Returns the messages
/// published to each channel, when the last one was flushed, and how many the server refused
/// for its rate limit.
async fn publisher(mut p: Publisher) -> Result<(Vec<u64>, Instant, u64)> {
    let mut refused = 0;
    match publish_all(&mut p, &mut refused).await {
        Ok((seq, done)) => Ok((seq, done, refused)),
        Err(error) => {
            // A server closes a connection that keeps going over its rate limit: say so.
            refused += take_refusals(&mut p.socket);
            if refused == 0 {
                return Err(error);
            }
            Err(error.context(format!(
                "the server closed the publisher's connection after refusing {refused} of its \
                 messages; {REFUSED_HINT}"
            )))
        }
    }
}

/// The work of [`publisher`]; counts refusals into `refused` as they arrive.
async fn publish_all(p: &mut Publisher, refused: &mut u64) -> Result<(Vec<u64>, Instant)> {
    let channels = p.heads.len();
    let subscribers = p.received.len();
    let filler = Filler::new(p.size - MIN_SIZE);
    let mut seq = vec![0u64; channels];
    let mut batch_counts = vec![0u64; channels];
    let mut total = 0u64;
    let mut next_channel = p.index % channels;
    let mut progress_at = (Instant::now(), 0u64);
    loop {
        if p.quota.is_some_and(|q| total >= q) || p.until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        // The largest lag of any subscriber behind what was sent to its channel.
        let lag = (0..subscribers)
            .map(|s| {
                p.sent[s % channels]
                    .0
                    .load(Relaxed)
                    .saturating_sub(p.received[s].0.load(Relaxed))
            })
            .max()
            .unwrap_or(0);
        if lag >= p.window {
            p.socket.flush().await?;
            let delivered: u64 = p.received.iter().map(|c| c.0.load(Relaxed)).sum();
            if delivered != progress_at.1 {
                progress_at = (Instant::now(), delivered);
            } else if progress_at.0.elapsed() > p.stall {
                // Something was lost and the window will never drain: stop, and let the
                // subscribers report what is missing.
                break;
            }
            // The window is full: let the subscribers (and the server) catch up, and resume as
            // soon as they report progress (the timeout covers a wake-up that came between
            // reading their counts and waiting).
            let _ = tokio::time::timeout(Duration::from_millis(1), p.progress.notified()).await;
            continue;
        }
        let mut batch = match p.pause {
            // Sporadic traffic: one message, then the pause.
            Some(_) => 1,
            None => ((p.window - lag) / p.publishers as u64).clamp(1, 512),
        };
        if let Some(quota) = p.quota {
            batch = batch.min(quota - total);
        }
        for _ in 0..batch {
            let c = next_channel;
            next_channel = (next_channel + 1) % channels;
            let head = &p.heads[c];
            let mut message = Vec::with_capacity(head.len() + p.size + p.tail.len());
            message.extend_from_slice(head.as_bytes());
            body(p.index, seq[c], &filler, &mut message);
            message.extend_from_slice(p.tail);
            seq[c] += 1;
            batch_counts[c] += 1;
            if p.write_each {
                p.socket.send(Frame::binary(message)).await?;
            } else {
                p.socket.feed(Frame::binary(message)).await?;
            }
        }
        total += batch;
        for (c, count) in batch_counts.iter_mut().enumerate() {
            if *count > 0 {
                p.sent[c].0.fetch_add(*count, Relaxed);
                *count = 0;
            }
        }
        p.socket.flush().await?;
        *refused += take_refusals(&mut p.socket);
        if let Some(pause) = p.pause {
            tokio::time::sleep(pause).await;
        }
    }
    let done = Instant::now();
    for end in &p.ends {
        p.socket.feed(Frame::binary(end.clone())).await?;
    }
    p.socket.flush().await?;
    // Keep the connection open until the server has taken the markers (closing at once could
    // drop them with the connection), and count the last refusals as they arrive.
    *refused += drain_refusals(&mut p.socket, Duration::from_millis(50)).await;
    Ok((seq, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(publisher: usize, seq: u64, size: usize) -> Vec<u8> {
        let mut data = b"LHTTP/1.0 bench\r\npublish:b\r\n\r\n".to_vec();
        body(publisher, seq, &Filler::new(size - MIN_SIZE), &mut data);
        data
    }

    #[test]
    fn intact_messages_pass_and_damaged_ones_are_caught() {
        let filler = &Filler::new(64 - MIN_SIZE);
        assert_eq!(
            classify(&frame(3, 42, 64), filler),
            Received::Data(3, 42, true)
        );
        let mut damaged = frame(3, 42, 64);
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(classify(&damaged, filler), Received::Data(3, 42, false));
        assert_eq!(
            classify(&frame(3, 42, 64)[..50], filler),
            Received::Data(3, 42, false)
        );
        assert_eq!(classify(&frame(3, 42, 64)[..40], filler), Received::Garbage);
        assert_eq!(
            classify(b"LHTTP/1.0 bench\r\n\r\nprobe", filler),
            Received::Probe
        );
        assert_eq!(
            classify(b"LHTTP/1.0 bench\r\n\r\nend0007", filler),
            Received::End(7)
        );
        assert_eq!(classify(b"garbage", filler), Received::Garbage);
    }

    #[test]
    fn channels_keep_the_bare_name_when_there_is_one() {
        assert_eq!(channel_name("bench", 0, 1), "bench");
        assert_eq!(channel_name("bench", 2, 4), "bench-2");
    }
}
