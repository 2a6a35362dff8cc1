//! `lhttp bench latency` and `lhttp bench http-publish`.
//!
//! `latency`: one publisher sends at a fixed rate, each body starting with its send time
//! (nanoseconds since an `Instant` shared by both ends, which live in this process) and a
//! sequence number; one subscriber records publish-to-delivery latency in an HDR histogram and
//! checks every delivery (lost, duplicated, out of order, corrupted) as `throughput` does.
//!
//! `http-publish`: K tasks each doing keep-alive `POST /publish`; one WebSocket subscriber checks
//! that every accepted message arrives exactly once (order is not checked: K requests race).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::bench::{connect, request};

/// Width of the send timestamp (nanoseconds) at the start of each latency body.
const TIME_WIDTH: usize = 20;
/// Width of the sequence number that follows it.
const SEQ_WIDTH: usize = 12;
/// The smallest body `latency` can carry.
const MIN_LATENCY_SIZE: usize = TIME_WIDTH + SEQ_WIDTH;

/// What `lhttp bench latency` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    pub url: String,
    pub sub_url: String,
    pub rate: u64,
    pub duration: Duration,
    pub size: usize,
    pub channel: String,
    pub timeout: Duration,
}

/// The result of `lhttp bench latency`.
#[derive(Debug)]
pub(crate) struct LatencyReport {
    pub requested_rate: u64,
    pub achieved_rate: f64,
    pub published: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub corrupted: u64,
    /// Nanoseconds.
    pub histogram: Histogram<u64>,
}

fn micros(nanos: u64) -> f64 {
    (nanos as f64 / 100.0).round() / 10.0
}

impl LatencyReport {
    pub(crate) fn is_clean(&self) -> bool {
        self.lost + self.duplicated + self.out_of_order + self.corrupted == 0
    }

    fn quantile_us(&self, q: f64) -> f64 {
        micros(self.histogram.value_at_quantile(q))
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requested_rate": self.requested_rate,
            "achieved_rate": self.achieved_rate.round(),
            "published": self.published,
            "deliveries": self.deliveries,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "corrupted": self.corrupted,
            "p50_us": self.quantile_us(0.5),
            "p90_us": self.quantile_us(0.9),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": micros(self.histogram.max()),
            "mean_us": (self.histogram.mean() / 100.0).round() / 10.0,
        })
    }

    pub(crate) fn table(&self) -> String {
        format!(
            "rate       {:>12} msg/s requested, {:.0} achieved\n\
             published  {:>12}\ndeliveries {:>12}\n\
             latency    p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us\n\
             lost {}  duplicated {}  out of order {}  corrupted {}",
            self.requested_rate,
            self.achieved_rate,
            self.published,
            self.deliveries,
            self.quantile_us(0.5),
            self.quantile_us(0.9),
            self.quantile_us(0.99),
            self.quantile_us(0.999),
            micros(self.histogram.max()),
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.corrupted
        )
    }
}

/// The body of message `seq` sent at `sent_ns`: the time, the number, then a pattern derived
/// from the number (to detect corruption).
fn latency_body(sent_ns: u64, seq: u64, size: usize, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "{sent_ns:0tw$}{seq:0sw$}",
        tw = TIME_WIDTH,
        sw = SEQ_WIDTH
    );
    out.extend((0..size.saturating_sub(MIN_LATENCY_SIZE)).map(|i| pattern(seq, i)));
}

fn pattern(seq: u64, i: usize) -> u8 {
    b'a' + ((seq as usize + i) % 26) as u8
}

fn parse_number(digits: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(digits?).ok()?.parse().ok()
}

/// A received latency frame: `Ok(None)` for a probe, else (sent_ns, seq, intact).
fn check_latency(data: &[u8], size: usize) -> Result<Option<(u64, u64, bool)>, ()> {
    let start = data.windows(4).position(|w| w == b"\r\n\r\n").ok_or(())? + 4;
    let payload = &data[start..];
    if payload.starts_with(b"probe") {
        return Ok(None);
    }
    let sent = parse_number(payload.get(..TIME_WIDTH)).ok_or(())?;
    let seq = parse_number(payload.get(TIME_WIDTH..MIN_LATENCY_SIZE)).ok_or(())?;
    let rest = &payload[MIN_LATENCY_SIZE..];
    let intact = rest.len() == size - MIN_LATENCY_SIZE
        && rest.iter().enumerate().all(|(i, &b)| b == pattern(seq, i));
    Ok(Some((sent, seq, intact)))
}

/// Runs `lhttp bench latency`.
pub(crate) async fn latency(opts: Latency) -> Result<LatencyReport> {
    if opts.size < MIN_LATENCY_SIZE {
        bail!("--size must be at least {MIN_LATENCY_SIZE} bytes");
    }
    if opts.rate == 0 {
        bail!("--rate must be positive");
    }
    let count = ((opts.rate as f64 * opts.duration.as_secs_f64()).round() as u64).max(1);
    let mut subscriber = connect(&opts.sub_url, opts.timeout).await?;
    request(
        &mut subscriber,
        format!(
            "LHTTP/1.0 bench\r\nsubscribe:{}\r\nrequest-id:bench-lat\r\n\r\n",
            opts.channel
        ),
        "bench-lat",
        opts.timeout,
    )
    .await?;
    let mut publisher = connect(&opts.url, opts.timeout).await?;
    let head = format!("LHTTP/1.0 bench\r\npublish:{}\r\n\r\n", opts.channel);

    let base = Instant::now();
    let warmed = Arc::new(AtomicU64::new(0));
    let size = opts.size;
    let task = {
        let warmed = warmed.clone();
        tokio::spawn(async move {
            // 1 us .. 60 s, 3 significant digits.
            let mut histogram = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)
                .expect("valid histogram bounds");
            let (mut received, mut lost, mut duplicated, mut out_of_order, mut corrupted) =
                (0u64, 0u64, 0u64, 0u64, 0u64);
            let mut expected = 0u64;
            while expected < count {
                let Some(Ok(frame)) = subscriber.next().await else {
                    break;
                };
                let now = base.elapsed().as_nanos() as u64;
                if !matches!(frame, Frame::Text(_) | Frame::Binary(_)) {
                    continue;
                }
                match check_latency(&frame.into_data(), size) {
                    Ok(None) => warmed.store(1, Relaxed),
                    Ok(Some((sent, seq, intact))) => {
                        received += 1;
                        if !intact {
                            corrupted += 1;
                        }
                        histogram.saturating_record(now.saturating_sub(sent).max(1_000));
                        if seq == expected {
                            expected += 1;
                        } else if seq > expected {
                            lost += seq - expected;
                            out_of_order += 1;
                            expected = seq + 1;
                        } else {
                            duplicated += 1;
                        }
                    }
                    Err(()) => corrupted += 1,
                }
            }
            lost += count.saturating_sub(expected);
            (
                histogram,
                [received, lost, duplicated, out_of_order, corrupted],
            )
        })
    };

    // Warm-up: probes until the subscriber got one.
    let deadline = Instant::now() + opts.timeout;
    while warmed.load(Relaxed) == 0 {
        if Instant::now() > deadline {
            bail!("warm-up: the subscriber received no probe in time");
        }
        publisher.send(Frame::text(format!("{head}probe"))).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Paced sending: every 1 ms tick, send what the schedule says is due by now.
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        ticks.tick().await;
        let due = ((started.elapsed().as_secs_f64() * opts.rate as f64) as u64 + 1).min(count);
        while sent < due {
            let mut message = Vec::with_capacity(head.len() + opts.size);
            message.extend_from_slice(head.as_bytes());
            latency_body(base.elapsed().as_nanos() as u64, sent, size, &mut message);
            publisher.feed(Frame::binary(message)).await?;
            sent += 1;
        }
        publisher.flush().await?;
    }
    let published = started.elapsed();

    let (histogram, [received, lost, duplicated, out_of_order, corrupted]) =
        tokio::time::timeout(opts.timeout, task)
            .await
            .context("the subscriber did not finish in time")??;
    Ok(LatencyReport {
        requested_rate: opts.rate,
        achieved_rate: count as f64 / published.as_secs_f64().max(1e-9),
        published: count,
        deliveries: received,
        lost,
        duplicated,
        out_of_order,
        corrupted,
        histogram,
    })
}

/// What `lhttp bench http-publish` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct HttpPublish {
    /// The WebSocket URL (`--url`); the publish URL is derived from it.
    pub url: String,
    pub concurrency: usize,
    pub count: u64,
    pub size: usize,
    pub channel: String,
    pub timeout: Duration,
}

/// The result of `lhttp bench http-publish`.
#[derive(Debug)]
pub(crate) struct HttpPublishReport {
    pub publish_url: String,
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    pub elapsed: Duration,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
}

impl HttpPublishReport {
    pub(crate) fn is_clean(&self) -> bool {
        self.failed + self.lost + self.duplicated == 0
    }

    fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "publish_url": self.publish_url,
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.failed,
            "first_failure": self.first_failure,
            "requests_per_sec": self.requests_per_sec().round(),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "deliveries": self.deliveries,
            "lost": self.lost,
            "duplicated": self.duplicated,
        })
    }

    pub(crate) fn table(&self) -> String {
        let mut out = format!(
            "POST       {}\nrequests   {:>12} ({} ok, {} failed)\nrate       {:>12.0} req/s\n\
             elapsed    {:>12.3} s\ndeliveries {:>12}\nlost {}  duplicated {}",
            self.publish_url,
            self.requests,
            self.ok,
            self.failed,
            self.requests_per_sec(),
            self.elapsed.as_secs_f64(),
            self.deliveries,
            self.lost,
            self.duplicated
        );
        if let Some(failure) = &self.first_failure {
            out.push_str(&format!("\nfirst failure: {failure}"));
        }
        out
    }
}

/// `ws://host:port/path` -> `http://host:port/publish` (`wss` -> `https`).
pub(crate) fn publish_url(ws_url: &str) -> Result<String> {
    let (scheme, rest) = if let Some(rest) = ws_url.strip_prefix("ws://") {
        ("http", rest)
    } else if let Some(rest) = ws_url.strip_prefix("wss://") {
        ("https", rest)
    } else if let Some(rest) = ws_url.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = ws_url.strip_prefix("https://") {
        ("https", rest)
    } else {
        bail!("--url must start with ws:// or wss://: {ws_url}");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        bail!("--url has no host: {ws_url}");
    }
    Ok(format!("{scheme}://{authority}/publish"))
}

/// Runs `lhttp bench http-publish`.
pub(crate) async fn http_publish(opts: HttpPublish) -> Result<HttpPublishReport> {
    if opts.size < SEQ_WIDTH {
        bail!("--size must be at least {SEQ_WIDTH} bytes");
    }
    let url = publish_url(&opts.url)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency.max(1))
        .timeout(opts.timeout)
        .build()
        .context("cannot build the HTTP client")?;
    let head = format!("LHTTP/1.0 bench\r\npublish:{}\r\n\r\n", opts.channel);

    // The checking subscriber.
    let mut subscriber = connect(&opts.url, opts.timeout).await?;
    request(
        &mut subscriber,
        format!(
            "LHTTP/1.0 bench\r\nsubscribe:{}\r\nrequest-id:bench-http\r\n\r\n",
            opts.channel
        ),
        "bench-http",
        opts.timeout,
    )
    .await?;
    let distinct = Arc::new(AtomicU64::new(0));
    let duplicated = Arc::new(AtomicU64::new(0));
    let warmed = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (distinct, duplicated, warmed, count) = (
            distinct.clone(),
            duplicated.clone(),
            warmed.clone(),
            opts.count,
        );
        tokio::spawn(async move {
            let mut seen = vec![false; count as usize];
            while let Some(Ok(frame)) = subscriber.next().await {
                if !matches!(frame, Frame::Text(_) | Frame::Binary(_)) {
                    continue;
                }
                let data = frame.into_data();
                let Some(start) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let payload = &data[start + 4..];
                if payload.starts_with(b"probe") {
                    warmed.store(1, Relaxed);
                    continue;
                }
                let Some(seq) = parse_number(payload.get(..SEQ_WIDTH)) else {
                    continue;
                };
                match seen.get_mut(seq as usize) {
                    Some(flag) if !*flag => {
                        *flag = true;
                        distinct.fetch_add(1, Relaxed);
                    }
                    Some(_) => {
                        duplicated.fetch_add(1, Relaxed);
                    }
                    None => {}
                }
            }
        })
    };

    // Warm-up, over HTTP too: this also opens the first keep-alive connection.
    let deadline = Instant::now() + opts.timeout;
    while warmed.load(Relaxed) == 0 {
        if Instant::now() > deadline {
            bail!("warm-up: the subscriber received no probe in time");
        }
        client
            .post(&url)
            .body(format!("{head}probe"))
            .send()
            .await
            .with_context(|| format!("cannot POST to {url}"))?
            .bytes()
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(opts.concurrency);
    for _ in 0..opts.concurrency.max(1) {
        let (client, next, url, head, count, size) = (
            client.clone(),
            next.clone(),
            url.clone(),
            head.clone(),
            opts.count,
            opts.size,
        );
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut first_failure) = (0u64, 0u64, None::<String>);
            loop {
                let seq = next.fetch_add(1, Relaxed);
                if seq >= count {
                    break;
                }
                let mut body = Vec::with_capacity(head.len() + size);
                body.extend_from_slice(head.as_bytes());
                body.extend_from_slice(format!("{seq:0SEQ_WIDTH$}").as_bytes());
                body.extend((0..size - SEQ_WIDTH).map(|i| pattern(seq, i)));
                let outcome = match client.post(&url).body(body).send().await {
                    Ok(response) => {
                        let status = response.status();
                        // Read the body to the end so that the connection is reused.
                        match response.bytes().await {
                            Ok(_) if status == reqwest::StatusCode::OK => Ok(()),
                            Ok(answer) => Err(format!(
                                "{status}: {}",
                                String::from_utf8_lossy(&answer).trim()
                            )),
                            Err(error) => Err(error.to_string()),
                        }
                    }
                    Err(error) => Err(error.to_string()),
                };
                match outcome {
                    Ok(()) => ok += 1,
                    Err(error) => {
                        failed += 1;
                        first_failure.get_or_insert(error);
                    }
                }
            }
            (ok, failed, first_failure)
        }));
    }
    let (mut ok, mut failed, mut first_failure) = (0u64, 0u64, None);
    for worker in workers {
        let (o, f, first) = worker.await?;
        ok += o;
        failed += f;
        if first_failure.is_none() {
            first_failure = first;
        }
    }
    let elapsed = started.elapsed();

    // Wait for the accepted messages to arrive (or the timeout).
    let deadline = Instant::now() + opts.timeout;
    while distinct.load(Relaxed) < ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    watcher.abort();
    let deliveries = distinct.load(Relaxed);
    Ok(HttpPublishReport {
        publish_url: url,
        requests: opts.count,
        ok,
        failed,
        first_failure,
        elapsed,
        deliveries,
        lost: ok.saturating_sub(deliveries),
        duplicated: duplicated.load(Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_bodies_round_trip_and_damage_is_caught() {
        let mut frame = b"LHTTP/1.0 bench\r\npublish:b\r\n\r\n".to_vec();
        latency_body(123_456_789, 42, 64, &mut frame);
        assert_eq!(check_latency(&frame, 64), Ok(Some((123_456_789, 42, true))));
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert_eq!(
            check_latency(&frame, 64),
            Ok(Some((123_456_789, 42, false)))
        );
        assert_eq!(check_latency(&frame[..50], 64), Err(()));
        assert_eq!(check_latency(b"LHTTP/1.0 b\r\n\r\nprobe", 64), Ok(None));
    }

    #[test]
    fn publish_url_is_derived_from_the_websocket_url() {
        assert_eq!(
            publish_url("ws://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080/publish"
        );
        assert_eq!(
            publish_url("wss://example.org/ws").unwrap(),
            "https://example.org/publish"
        );
        assert!(publish_url("ftp://x").is_err());
    }
}
