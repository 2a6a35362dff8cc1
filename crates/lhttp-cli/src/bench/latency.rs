//! `lhttp bench latency`: one publisher sends at a fixed rate, each body starting with its send
//! time (nanoseconds since an `Instant` shared by both ends, which live in this process) and a
//! sequence number; one subscriber records publish-to-delivery latency in an HDR histogram and
//! checks every delivery (lost, duplicated, out of order, corrupted) as `throughput` does.

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

use super::{
    Filler, Output, Tls, connect, drain_refusals, parse_digits, payload_sized, plot, progress,
    push_padded, request, take_refusals, with_refusals,
};

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
    pub tls: Tls,
    pub timeout: Duration,
    pub output: Output,
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
    /// Messages the server refused with 429 (its per-connection rate limit).
    pub refused: u64,
    /// Nanoseconds.
    pub histogram: Histogram<u64>,
}

fn micros(nanos: u64) -> f64 {
    (nanos as f64 / 100.0).round() / 10.0
}

/// A histogram of latencies in nanoseconds: 1 us to 60 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// The quantiles every latency report gives, in microseconds, as JSON fields.
pub(crate) fn quantiles_json(
    histogram: &Histogram<u64>,
) -> serde_json::Map<String, serde_json::Value> {
    let at = |q: f64| micros(histogram.value_at_quantile(q));
    let fields = serde_json::json!({
        "p50_us": at(0.5),
        "p90_us": at(0.9),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": micros(histogram.max()),
        "mean_us": (histogram.mean() / 100.0).round() / 10.0,
    });
    match fields {
        serde_json::Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    }
}

/// The same quantiles for a table: `p50 .. us  p90 .. us ...`.
pub(crate) fn quantiles_line(histogram: &Histogram<u64>) -> String {
    let at = |q: f64| micros(histogram.value_at_quantile(q));
    format!(
        "p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        micros(histogram.max())
    )
}

impl LatencyReport {
    pub(crate) fn is_clean(&self) -> bool {
        self.lost + self.duplicated + self.out_of_order + self.corrupted == 0
    }

    fn quantile_us(&self, q: f64) -> f64 {
        micros(self.histogram.value_at_quantile(q))
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let mut report = serde_json::json!({
            "scenario": "latency",
            "requested_rate": self.requested_rate,
            "achieved_rate": self.achieved_rate.round(),
            "published": self.published,
            "deliveries": self.deliveries,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "corrupted": self.corrupted,
            "rate_limited": self.refused,
        });
        if let Some(fields) = report.as_object_mut() {
            fields.extend(quantiles_json(&self.histogram));
        }
        report
    }

    pub(crate) fn table(&self) -> String {
        with_refusals(self.counts(), self.refused)
    }

    fn counts(&self) -> String {
        format!(
            "rate       {:>12} msg/s requested, {:.0} achieved\n\
             published  {:>12}\ndeliveries {:>12}\n\
             latency    {}\n\
             lost {}  duplicated {}  out of order {}  corrupted {}",
            self.requested_rate,
            self.achieved_rate,
            self.published,
            self.deliveries,
            quantiles_line(&self.histogram),
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.corrupted
        )
    }
}

/// The body of message `seq` sent at `sent_ns`: the time, the number, then a pattern derived
/// from the number (to detect corruption).
fn latency_body(sent_ns: u64, seq: u64, filler: &Filler, out: &mut Vec<u8>) {
    push_padded(out, sent_ns, TIME_WIDTH);
    push_padded(out, seq, SEQ_WIDTH);
    out.extend_from_slice(filler.of(seq));
}

/// A received latency frame, for bodies of `MIN_LATENCY_SIZE` + `filler` bytes: `Ok(None)`
/// for a probe, else (sent_ns, seq, intact).
fn check_latency(data: &[u8], filler: &Filler) -> Result<Option<(u64, u64, bool)>, ()> {
    let payload = payload_sized(data, MIN_LATENCY_SIZE + filler.len()).ok_or(())?;
    if payload.starts_with(b"probe") {
        return Ok(None);
    }
    let sent = parse_digits(payload.get(..TIME_WIDTH)).ok_or(())?;
    let seq = parse_digits(payload.get(TIME_WIDTH..MIN_LATENCY_SIZE)).ok_or(())?;
    let intact = filler.is_intact(&payload[MIN_LATENCY_SIZE..], seq);
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
    let mut subscriber = connect(&opts.sub_url, &opts.tls, opts.timeout).await?;
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
    let mut publisher = connect(&opts.url, &opts.tls, opts.timeout).await?;
    let head = format!("LHTTP/1.0 bench\r\npublish:{}\r\n\r\n", opts.channel);

    let base = Instant::now();
    let warmed = Arc::new(AtomicU64::new(0));
    let filler = Arc::new(Filler::new(opts.size - MIN_LATENCY_SIZE));
    let task = {
        let filler = filler.clone();
        let warmed = warmed.clone();
        tokio::spawn(async move {
            let mut histogram = histogram();
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
                match check_latency(&frame.into_data(), &filler) {
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
    let bar = progress::bar(opts.output.progress, count, "published");
    let started = Instant::now();
    let mut sent = 0u64;
    let mut refused = 0;
    while sent < count {
        ticks.tick().await;
        bar.set_position(sent);
        let due = ((started.elapsed().as_secs_f64() * opts.rate as f64) as u64 + 1).min(count);
        while sent < due {
            let mut message = Vec::with_capacity(head.len() + opts.size);
            message.extend_from_slice(head.as_bytes());
            latency_body(
                base.elapsed().as_nanos() as u64,
                sent,
                &filler,
                &mut message,
            );
            publisher.feed(Frame::binary(message)).await?;
            sent += 1;
        }
        publisher.flush().await?;
        refused += take_refusals(&mut publisher);
    }
    let published = started.elapsed();
    bar.finish_and_clear();
    refused += drain_refusals(&mut publisher, Duration::from_millis(50)).await;

    let (histogram, [received, lost, duplicated, out_of_order, corrupted]) =
        tokio::time::timeout(opts.timeout, task)
            .await
            .context("the subscriber did not finish in time")??;
    let report = LatencyReport {
        requested_rate: opts.rate,
        achieved_rate: count as f64 / published.as_secs_f64().max(1e-9),
        published: count,
        deliveries: received,
        lost,
        duplicated,
        out_of_order,
        corrupted,
        refused,
        histogram,
    };
    if let Some(path) = &opts.output.plot {
        plot::latency(
            path,
            &report.histogram,
            &format!(
                "lhttp bench latency: {} msg/s, {} B bodies, p99 {:.0} us",
                opts.rate,
                opts.size,
                report.quantile_us(0.99)
            ),
        )?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_bodies_round_trip_and_damage_is_caught() {
        let filler = &Filler::new(64 - MIN_LATENCY_SIZE);
        let mut frame = b"LHTTP/1.0 bench\r\npublish:b\r\n\r\n".to_vec();
        latency_body(123_456_789, 42, filler, &mut frame);
        assert_eq!(
            check_latency(&frame, filler),
            Ok(Some((123_456_789, 42, true)))
        );
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert_eq!(
            check_latency(&frame, filler),
            Ok(Some((123_456_789, 42, false)))
        );
        assert_eq!(check_latency(&frame[..50], filler), Err(()));
        assert_eq!(check_latency(b"LHTTP/1.0 b\r\n\r\nprobe", filler), Ok(None));
    }
}
