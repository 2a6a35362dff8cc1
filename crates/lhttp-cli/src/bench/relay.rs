//! `lhttp bench relay`: is every message delivered exactly once when the subscriber's
//! connection keeps breaking?
//!
//! The scenario puts a TCP relay of its own between one subscriber and the server and cuts
//! every connection through it at a fixed interval while a publisher (connected directly)
//! sends numbered, time-stamped messages to a channel that keeps history. The subscriber is
//! the Rust SDK with its automatic reconnection and recovery (`since` + `epoch`), exactly as an
//! application uses it; the scenario only counts what it hands over: each sequence number
//! delivered once (exactly once), never (lost), more than once (duplicated), or before an
//! earlier one (out of order). Recovery time is, for each cut, the time from the cut until the
//! subscriber receives the first message published after it: the moment it is live again, the
//! reconnection and the catch-up of what was missed included.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lhttp_client::Client;
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What `lhttp bench relay` is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    /// The server (ws:// or tcp://, on a loopback address).
    pub url: String,
    /// Messages to publish.
    pub count: u64,
    /// Messages per second.
    pub rate: u64,
    /// Time between two cuts.
    pub drop_every: Duration,
    /// A channel that keeps history on the server.
    pub channel: String,
    /// How long to wait for the last messages after publishing ended.
    pub timeout: Duration,
}

/// What the run measured.
#[derive(Debug)]
pub(crate) struct Report {
    published: u64,
    exactly_once: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    cuts: usize,
    gaps: u64,
    /// Recovery time of each cut, sorted.
    recovery: Vec<Duration>,
}

impl Report {
    pub(crate) fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.gaps == 0
    }

    fn share(&self) -> f64 {
        if self.published == 0 {
            return 0.0;
        }
        100.0 * self.exactly_once as f64 / self.published as f64
    }

    fn percentile(&self, p: f64) -> Option<Duration> {
        if self.recovery.is_empty() {
            return None;
        }
        let at = ((self.recovery.len() as f64 * p).ceil() as usize).clamp(1, self.recovery.len());
        Some(self.recovery[at - 1])
    }

    pub(crate) fn table(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        };
        format!(
            "published     {:>10}\nexactly once  {:>10}  ({:.3}%)\nlost          {:>10}\nduplicated    {:>10}\nout of order  {:>10}\ncuts          {:>10}\ngaps reported {:>10}\nrecovery      p50 {}  p99 {}  max {}",
            self.published,
            self.exactly_once,
            self.share(),
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.cuts,
            self.gaps,
            ms(self.percentile(0.5)),
            ms(self.percentile(0.99)),
            ms(self.recovery.last().copied()),
        )
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let us = |d: Option<Duration>| d.map(|d| d.as_micros() as u64);
        json!({
            "published": self.published,
            "exactly_once": self.exactly_once,
            "exactly_once_percent": self.share(),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "cuts": self.cuts,
            "gaps": self.gaps,
            "recovery_us": {
                "p50": us(self.percentile(0.5)),
                "p99": us(self.percentile(0.99)),
                "max": us(self.recovery.last().copied()),
            },
        })
    }
}

/// The host and port of a ws:// or tcp:// URL, which must be a loopback address: the relay
/// breaks connections on purpose, and only loopback targets are fair game for that.
fn loopback_target(url: &str) -> Result<(String, SocketAddr)> {
    let (scheme, rest) = url
        .split_once("://")
        .context("the URL needs a scheme (ws:// or tcp://)")?;
    if scheme != "ws" && scheme != "tcp" {
        bail!("bench relay drives ws:// or tcp:// servers, not {scheme}://");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let address: SocketAddr = authority
        .replace("localhost", "127.0.0.1")
        .parse()
        .with_context(|| format!("bench relay needs an IP address and port, not {authority:?}"))?;
    if !address.ip().is_loopback() {
        bail!("bench relay only drives a server on a loopback address (127.0.0.0/8 or ::1)");
    }
    Ok((scheme.to_owned(), address))
}

/// A relay on 127.0.0.1:0 to `target`; every bump of `cuts` closes every connection open
/// through it (both sides). Returns its address.
async fn start_relay(target: SocketAddr, cuts: watch::Receiver<u64>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut cuts = cuts.clone();
            cuts.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                // Either side ending, or a cut, drops both sockets.
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cuts.changed() => {}
                }
            });
        }
    });
    Ok(address)
}

/// What the subscriber saw, shared with the task that reads its subscription.
#[derive(Default)]
struct Seen {
    /// Times each sequence number was delivered.
    deliveries: Vec<u8>,
    /// The highest sequence number delivered so far.
    highest: Option<u64>,
    out_of_order: u64,
    /// (publish time, receive time) of each delivery, both since the start.
    timeline: Vec<(Duration, Duration)>,
}

/// Runs the scenario.
pub(crate) async fn relay(options: Relay) -> Result<Report> {
    let (scheme, target) = loopback_target(&options.url)?;
    if options.count == 0 || options.rate == 0 {
        bail!("-n and --rate must be greater than 0");
    }
    let (cut, cuts) = watch::channel(0u64);
    let relay = start_relay(target, cuts).await?;
    let relay_url = format!("{scheme}://{relay}/");

    let subscriber = Client::builder(relay_url)
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .connect()
        .await
        .context("the subscriber cannot connect through the relay")?;
    let kept = subscriber
        .history(&options.channel, lhttp_client::HistoryQuery::Recent(0))
        .await
        .context("history")?;
    if kept.epoch.is_none() {
        bail!(
            "channel {} keeps no history on this server, so nothing can be recovered: add a [[channels]] block with history_size for it (docs/operations.md, \"Channel history\")",
            options.channel
        );
    }
    // `recent: 0` gives the subscription its position at once, so that even a cut before its
    // first message is recovered.
    let mut subscription = subscriber
        .subscribe_recent(&options.channel, 0)
        .await
        .context("subscribe")?;
    let publisher = Client::connect(&options.url)
        .await
        .context("the publisher cannot connect")?;

    let start = Instant::now();
    let seen = Arc::new(Mutex::new(Seen {
        deliveries: vec![0; options.count as usize],
        ..Seen::default()
    }));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.recv().await {
                let received = start.elapsed();
                let Some((seq, sent)) = parse_body(message.body()) else {
                    continue;
                };
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(count) = seen.deliveries.get_mut(seq as usize) {
                    *count = count.saturating_add(1);
                }
                if seen.highest.is_some_and(|h| seq < h) {
                    seen.out_of_order += 1;
                }
                seen.highest = seen.highest.max(Some(seq));
                seen.timeline.push((sent, received));
            }
            subscription.gaps()
        })
    };

    // Cuts at a fixed interval, on their own clock, while publishing goes on.
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cutter = {
        let publishing = publishing.clone();
        let every = options.drop_every;
        tokio::spawn(async move {
            let mut times = Vec::new();
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            while publishing.load(std::sync::atomic::Ordering::Relaxed) {
                ticks.tick().await;
                times.push(start.elapsed());
                cut.send_modify(|n| *n += 1);
            }
            times
        })
    };

    // Publishes in steps of one millisecond, as many as the rate allows by then.
    let per_ms = options.rate as f64 / 1000.0;
    let mut sent = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    while sent < options.count {
        ticks.tick().await;
        let due = ((start.elapsed().as_secs_f64() * 1000.0 * per_ms) as u64 + 1).min(options.count);
        while sent < due {
            let body = format!("{sent:010} {:020}", start.elapsed().as_nanos());
            publisher
                .publish(&options.channel, body.into_bytes())
                .await
                .context("publish")?;
            sent += 1;
        }
    }
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    let cut_times = cutter.await.context("the cutter")?;

    // Waits for the last messages: until every one came, or nothing new came for `timeout`.
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let delivered = {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.deliveries.iter().filter(|&&n| n > 0).count() as u64
        };
        if delivered == options.count {
            break;
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        } else if last.1.elapsed() > options.timeout {
            break;
        }
    }
    // A little longer, so that a late duplicate is seen too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    subscriber.close().await;
    publisher.close().await;
    let gaps = reader.await.context("the reader")?;

    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    let mut recovery: Vec<Duration> = cut_times
        .iter()
        .filter_map(|&cut| {
            seen.timeline
                .iter()
                .find(|&&(sent, _)| sent > cut)
                .map(|&(_, received)| received.saturating_sub(cut))
        })
        .collect();
    recovery.sort();
    Ok(Report {
        published: options.count,
        exactly_once: seen.deliveries.iter().filter(|&&n| n == 1).count() as u64,
        lost: seen.deliveries.iter().filter(|&&n| n == 0).count() as u64,
        duplicated: seen.deliveries.iter().filter(|&&n| n > 1).count() as u64,
        out_of_order: seen.out_of_order,
        cuts: cut_times.len(),
        gaps,
        recovery,
    })
}

/// `<seq> <publish time in ns since the start>`.
fn parse_body(body: &[u8]) -> Option<(u64, Duration)> {
    let text = std::str::from_utf8(body).ok()?;
    let (seq, sent) = text.split_once(' ')?;
    Some((seq.parse().ok()?, Duration::from_nanos(sent.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_ws_and_tcp_servers_are_driven() {
        assert!(loopback_target("ws://127.0.0.1:8081/").is_ok());
        assert!(loopback_target("tcp://localhost:9000").is_ok());
        assert!(loopback_target("ws://10.0.0.1:8081/").is_err());
        assert!(loopback_target("wss://127.0.0.1:8081/").is_err());
        assert!(loopback_target("unix:///tmp/x.sock").is_err());
    }
}
