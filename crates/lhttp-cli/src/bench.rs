//! `lhttp bench throughput`: a load generator that checks every delivery.
//!
//! One publisher (on `--url`) floods a channel with numbered messages; S subscribers (on
//! `--sub-url`, the same server by default, or another node of a cluster) check that each one
//! arrives exactly once, in order, and intact. It speaks WebSocket directly (not through the SDK)
//! to stay lean, since on a small machine it shares the CPU with the server.
//!
//! Flow control: the publisher keeps at most `--window` messages ahead of the slowest
//! subscriber, so that the measurement shows the server's pace rather than its slow-consumer
//! policy (a subscriber more than `limits.outbound_queue` behind would be disconnected).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message as Frame};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Width of the sequence number at the start of each body.
const SEQ_WIDTH: usize = 12;

/// What `lhttp bench throughput` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Throughput {
    pub url: String,
    pub sub_url: String,
    pub subscribers: usize,
    pub count: u64,
    pub size: usize,
    pub channel: String,
    pub window: u64,
    pub timeout: Duration,
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

/// The result of a run.
#[derive(Debug)]
pub(crate) struct Report {
    pub published_per_sec: f64,
    pub delivered_per_sec: f64,
    pub megabytes_per_sec: f64,
    pub elapsed: Duration,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub corrupted: u64,
}

impl Report {
    pub(crate) fn is_clean(&self) -> bool {
        self.lost + self.duplicated + self.out_of_order + self.corrupted == 0
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "published_per_sec": self.published_per_sec.round(),
            "delivered_per_sec": self.delivered_per_sec.round(),
            "megabytes_per_sec": (self.megabytes_per_sec * 100.0).round() / 100.0,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "deliveries": self.deliveries,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "corrupted": self.corrupted,
        })
    }

    pub(crate) fn table(&self) -> String {
        format!(
            "published  {:>12.0} msg/s\ndelivered  {:>12.0} msg/s  ({:.1} MB/s)\n\
             elapsed    {:>12.3} s\ndeliveries {:>12}\nlost {}  duplicated {}  out of order {}  corrupted {}",
            self.published_per_sec,
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

pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Socket> {
    // Nagle off, as a real-time client should be: latency must not include its delays.
    let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
    let (socket, _) = tokio::time::timeout(timeout, connecting)
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(socket)
}

/// Sends `text` and waits for the answer carrying request-id `id` (an `ok`).
pub(crate) async fn request(
    socket: &mut Socket,
    text: String,
    id: &str,
    timeout: Duration,
) -> Result<()> {
    socket.send(Frame::text(text)).await?;
    let needle = format!("request-id:{id}\r\n");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no answer in time")?
            .context("connection closed")??;
        let data = frame.into_data();
        let text = String::from_utf8_lossy(&data);
        if text.contains(&needle) {
            if text.starts_with("LHTTP/1.0 ok") {
                return Ok(());
            }
            bail!(
                "the server refused: {}",
                text.lines().take(3).collect::<Vec<_>>().join(" ")
            );
        }
    }
}

/// The body of message `seq`: the number, then a pattern derived from it (to detect corruption).
fn body(seq: u64, size: usize) -> Vec<u8> {
    let mut body = format!("{seq:0width$}", width = SEQ_WIDTH).into_bytes();
    body.extend(
        (0..size.saturating_sub(SEQ_WIDTH)).map(|i| b'a' + ((seq as usize + i) % 26) as u8),
    );
    body
}

/// Checks a received frame; returns its sequence number, or `None` for a warm-up probe.
fn check(data: &[u8], size: usize) -> Result<Option<(u64, bool)>, ()> {
    let start = data.windows(4).position(|w| w == b"\r\n\r\n").ok_or(())? + 4;
    let payload = &data[start..];
    if payload.starts_with(b"probe") {
        return Ok(None);
    }
    let digits = payload.get(..SEQ_WIDTH).ok_or(())?;
    let seq: u64 = std::str::from_utf8(digits)
        .map_err(|_| ())?
        .parse()
        .map_err(|_| ())?;
    Ok(Some((seq, payload == body(seq, size).as_slice())))
}

/// Runs the scenario and reports.
pub(crate) async fn throughput(opts: Throughput) -> Result<Report> {
    if opts.size < SEQ_WIDTH {
        bail!("--size must be at least {SEQ_WIDTH} bytes");
    }
    let mut subscribers = Vec::with_capacity(opts.subscribers);
    for i in 0..opts.subscribers {
        let mut socket = connect(&opts.sub_url, opts.timeout).await?;
        let id = format!("bench-sub-{i}");
        request(
            &mut socket,
            format!(
                "LHTTP/1.0 bench\r\nsubscribe:{}\r\nrequest-id:{id}\r\n\r\n",
                opts.channel
            ),
            &id,
            opts.timeout,
        )
        .await?;
        subscribers.push(socket);
    }
    let mut publisher = connect(&opts.url, opts.timeout).await?;
    let head = format!("LHTTP/1.0 bench\r\npublish:{}\r\n\r\n", opts.channel);

    // Every subscriber's progress, read by the publisher for flow control.
    let progress: Arc<Vec<AtomicU64>> =
        Arc::new((0..opts.subscribers).map(|_| AtomicU64::new(0)).collect());
    let warmed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (index, mut socket) in subscribers.into_iter().enumerate() {
        let (progress, warmed, count, size) =
            (progress.clone(), warmed.clone(), opts.count, opts.size);
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut expected = 0u64;
            let mut warm = false;
            while expected < count {
                let Some(Ok(frame)) = socket.next().await else {
                    break;
                };
                if !matches!(frame, Frame::Text(_) | Frame::Binary(_)) {
                    continue;
                }
                match check(&frame.into_data(), size) {
                    Ok(None) => {
                        if !warm {
                            warm = true;
                            warmed.fetch_add(1, Relaxed);
                        }
                    }
                    Ok(Some((seq, intact))) => {
                        seen.received += 1;
                        if !intact {
                            seen.corrupted += 1;
                        }
                        if seq == expected {
                            expected += 1;
                        } else if seq > expected {
                            seen.lost += seq - expected;
                            seen.out_of_order += 1;
                            expected = seq + 1;
                        } else {
                            seen.duplicated += 1;
                        }
                        progress[index].store(expected, Relaxed);
                    }
                    Err(()) => seen.corrupted += 1,
                }
            }
            seen.lost += count - expected;
            (seen, Instant::now())
        }));
    }

    // Warm-up: probes until every subscriber got one, so that a subscription that still has to
    // cross a cluster is in place before the clock starts.
    let deadline = Instant::now() + opts.timeout;
    while (warmed.load(Relaxed) as usize) < opts.subscribers {
        if Instant::now() > deadline {
            bail!("warm-up: not every subscriber received a probe in time");
        }
        publisher.send(Frame::text(format!("{head}probe"))).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let mut sent = 0u64;
    while sent < opts.count {
        let slowest = progress
            .iter()
            .map(|p| p.load(Relaxed))
            .min()
            .unwrap_or(sent);
        if sent - slowest >= opts.window {
            if started.elapsed() > opts.timeout * 10 {
                break;
            }
            publisher.flush().await?;
            // The window is full: let the subscribers (and the server) catch up.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let batch_end = (slowest + opts.window).min(opts.count);
        while sent < batch_end {
            let mut message = Vec::with_capacity(head.len() + opts.size);
            message.extend_from_slice(head.as_bytes());
            message.extend_from_slice(&body(sent, opts.size));
            publisher.feed(Frame::binary(message)).await?;
            sent += 1;
        }
        publisher.flush().await?;
    }
    let published = started.elapsed();

    let mut total = Seen::default();
    let mut finished = started;
    for task in tasks {
        let (seen, at) = tokio::time::timeout(opts.timeout, task)
            .await
            .context("a subscriber did not finish in time")??;
        total.received += seen.received;
        total.lost += seen.lost;
        total.duplicated += seen.duplicated;
        total.out_of_order += seen.out_of_order;
        total.corrupted += seen.corrupted;
        finished = finished.max(at);
    }
    let elapsed = finished - started;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let bytes = (head.len() + opts.size) as f64 * total.received as f64;
    Ok(Report {
        published_per_sec: opts.count as f64 / published.as_secs_f64().max(1e-9),
        delivered_per_sec: total.received as f64 / secs,
        megabytes_per_sec: bytes / secs / 1e6,
        elapsed,
        deliveries: total.received,
        lost: total.lost,
        duplicated: total.duplicated,
        out_of_order: total.out_of_order,
        corrupted: total.corrupted,
    })
}

/// What `lhttp bench connections` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    pub url: String,
    pub count: usize,
    pub channels: usize,
    pub pid: Option<u32>,
    pub timeout: Duration,
}

/// The result of `lhttp bench connections`.
#[derive(Debug)]
pub(crate) struct ConnectionsReport {
    pub connections: usize,
    pub elapsed: Duration,
    /// Server RSS before and after, in KiB, when a pid was given.
    pub rss_kib: Option<(u64, u64)>,
}

impl ConnectionsReport {
    fn per_connection_kib(&self) -> Option<f64> {
        self.rss_kib.map(|(before, after)| {
            after.saturating_sub(before) as f64 / self.connections.max(1) as f64
        })
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "connections": self.connections,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "rss_before_kib": self.rss_kib.map(|r| r.0),
            "rss_after_kib": self.rss_kib.map(|r| r.1),
            "kib_per_connection": self.per_connection_kib().map(|k| (k * 100.0).round() / 100.0),
        })
    }

    pub(crate) fn table(&self) -> String {
        let mut out = format!(
            "connections {:>8} (each subscribed, then idle)\nopened in   {:>8.3} s",
            self.connections,
            self.elapsed.as_secs_f64()
        );
        if let (Some((before, after)), Some(per)) = (self.rss_kib, self.per_connection_kib()) {
            out.push_str(&format!(
                "\nserver RSS  {before} KiB -> {after} KiB: {per:.2} KiB per connection"
            ));
        }
        out
    }
}

/// The resident set size of process `pid`, in KiB (Linux).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Opens `count` connections, each subscribed to one of `channels` channels, and measures the
/// server's memory growth. The connections stay open until the report is made.
pub(crate) async fn connections(opts: Connections) -> Result<ConnectionsReport> {
    let before = opts.pid.map(rss_kib).transpose()?;
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(opts.count);
    // Connect in waves, so that the server's accept queue is not the limit being measured.
    const WAVE: usize = 100;
    for wave in (0..opts.count).step_by(WAVE) {
        let end = (wave + WAVE).min(opts.count);
        let opened = futures_util::future::try_join_all((wave..end).map(|i| {
            let (url, channels, timeout) = (opts.url.clone(), opts.channels.max(1), opts.timeout);
            async move {
                let mut socket = connect(&url, timeout).await?;
                let id = format!("idle-{i}");
                request(
                    &mut socket,
                    format!(
                        "LHTTP/1.0 idle\r\nsubscribe:idle-{}\r\nrequest-id:{id}\r\n\r\n",
                        i % channels
                    ),
                    &id,
                    timeout,
                )
                .await?;
                anyhow::Ok(socket)
            }
        }))
        .await?;
        sockets.extend(opened);
    }
    let elapsed = started.elapsed();
    // Let the server settle (allocator, deferred frees) before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = opts.pid.map(rss_kib).transpose()?;
    drop(sockets);
    Ok(ConnectionsReport {
        connections: opts.count,
        elapsed,
        rss_kib: before.zip(after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, size: usize) -> Vec<u8> {
        let mut data = b"LHTTP/1.0 bench\r\npublish:b\r\n\r\n".to_vec();
        data.extend(body(seq, size));
        data
    }

    #[test]
    fn intact_messages_pass_and_damaged_ones_are_caught() {
        assert_eq!(check(&frame(42, 64), 64), Ok(Some((42, true))));
        let mut damaged = frame(42, 64);
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(check(&damaged, 64), Ok(Some((42, false))));
        assert_eq!(check(&frame(42, 64)[..50], 64), Ok(Some((42, false))));
        assert_eq!(check(&frame(42, 64)[..40], 64), Err(()));
        assert_eq!(check(b"LHTTP/1.0 bench\r\n\r\nprobe", 64), Ok(None));
        assert_eq!(check(b"garbage", 64), Err(()));
    }
}
