//! `lhttp bench requests`: request/reply through a queue group, over any transport of `--url`
//! or through the HTTP gateway, checking every answer.
//!
//! W workers join group `--queue` of `--channel` with `--credit` and echo each request's body
//! back (acknowledging it in the same message). The requester keeps `--concurrency` requests in
//! flight: over one connection to `--url` (`publish` + `reply-to`), or, with `--http URL`, as
//! keep-alive HTTP POSTs to a gateway route whose channel and queue are the ones given. Every
//! answer is checked: it must come once, for a request that was sent, with the body that was
//! sent. Errors (503, 504, 502) are counted by status.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use lhttp_client::Message;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::{Socket, Tls, connect, request};

/// What `lhttp bench requests` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Requests {
    pub url: String,
    /// A gateway route's URL: requests go there as HTTP POSTs instead of over `url`.
    pub http: Option<String>,
    pub channel: String,
    pub queue: String,
    pub workers: usize,
    pub credit: usize,
    pub concurrency: usize,
    pub count: u64,
    pub size: usize,
    pub tls: Tls,
    pub timeout: Duration,
}

/// The result of a run.
#[derive(Debug)]
pub(crate) struct RequestsReport {
    pub requests: u64,
    pub answered: u64,
    pub per_sec: f64,
    pub elapsed: Duration,
    /// Error answers by status.
    pub errors: BTreeMap<u16, u64>,
    pub duplicated: u64,
    pub corrupted: u64,
    pub unanswered: u64,
    /// Round-trip time, nanoseconds.
    pub histogram: Histogram<u64>,
}

impl RequestsReport {
    pub(crate) fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.duplicated + self.corrupted + self.unanswered == 0
    }

    fn quantile_us(&self, q: f64) -> f64 {
        (self.histogram.value_at_quantile(q) as f64 / 100.0).round() / 10.0
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "requests",
            "requests": self.requests,
            "answered": self.answered,
            "requests_per_sec": self.per_sec.round(),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "errors": self.errors.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "duplicated": self.duplicated,
            "corrupted": self.corrupted,
            "unanswered": self.unanswered,
            "p50_us": self.quantile_us(0.5),
            "p99_us": self.quantile_us(0.99),
            "max_us": self.quantile_us(1.0),
        })
    }

    pub(crate) fn table(&self) -> String {
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        format!(
            "requests   {:>12} in {:.2} s: {:.0} req/s\n\
             round trip p50 {:.1} us  p99 {:.1} us  max {:.1} us\n\
             answered {}  errors [{}]  duplicated {}  corrupted {}  unanswered {}",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.per_sec,
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.quantile_us(1.0),
            self.answered,
            errors.join(", "),
            self.duplicated,
            self.corrupted,
            self.unanswered
        )
    }
}

/// The body of request `seq`: its number, then a pattern derived from it.
fn body(seq: u64, size: usize) -> String {
    let mut body = format!("{seq:012}");
    let mut i = 0u64;
    while body.len() < size {
        body.push(char::from(b'a' + ((seq + i) % 26) as u8));
        i += 1;
    }
    body
}

/// What the requester has seen so far.
struct Tally {
    sent_at: Vec<Option<Instant>>,
    answered: u64,
    errors: BTreeMap<u16, u64>,
    duplicated: u64,
    corrupted: u64,
    histogram: Histogram<u64>,
}

impl Tally {
    fn new(count: u64) -> Result<Tally> {
        Ok(Tally {
            sent_at: vec![None; count as usize],
            answered: 0,
            errors: BTreeMap::new(),
            duplicated: 0,
            corrupted: 0,
            histogram: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        })
    }

    /// Records the answer to request `seq`: `Ok(body)` or `Err(status)`.
    fn answer(&mut self, seq: u64, outcome: std::result::Result<&[u8], u16>, size: usize) {
        let Some(slot) = self.sent_at.get_mut(seq as usize) else {
            self.corrupted += 1;
            return;
        };
        let Some(sent) = slot.take() else {
            self.duplicated += 1;
            return;
        };
        self.answered += 1;
        let _ = self
            .histogram
            .record((sent.elapsed().as_nanos() as u64).max(1));
        match outcome {
            Ok(got) if got == body(seq, size).as_bytes() => {}
            Ok(_) => self.corrupted += 1,
            Err(status) => *self.errors.entry(status).or_default() += 1,
        }
    }
}

pub(crate) async fn requests(opts: Requests) -> Result<RequestsReport> {
    if opts.size < 12 {
        bail!("--size must be at least 12 (the sequence number)");
    }
    if let Some(url) = opts.http.as_deref().filter(|u| !u.starts_with("http://")) {
        bail!(
            "--http takes a gateway route's plain http:// URL (its requests go out without \
             TLS), not {url}"
        );
    }
    let mut workers = Vec::new();
    for _ in 0..opts.workers {
        let mut socket = connect(&opts.url, &opts.tls, opts.timeout).await?;
        let join = format!(
            "LHTTP/1.0 sub\r\nsubscribe:{}\r\nqueue:{}\r\ncredit:{}\r\nrequest-id:join\r\n\r\n",
            opts.channel, opts.queue, opts.credit
        );
        request(&mut socket, join, "join", opts.timeout).await?;
        workers.push(tokio::spawn(work(socket)));
    }
    let tally = Arc::new(Mutex::new(Tally::new(opts.count)?));
    let started = Instant::now();
    match &opts.http {
        None => over_connection(&opts, &tally).await?,
        Some(url) => over_http(&opts, url, &tally).await?,
    }
    let elapsed = started.elapsed();
    for worker in workers {
        worker.abort();
    }
    let tally = tally.lock().await;
    Ok(RequestsReport {
        requests: opts.count,
        answered: tally.answered,
        per_sec: tally.answered as f64 / elapsed.as_secs_f64(),
        elapsed,
        errors: tally.errors.clone(),
        duplicated: tally.duplicated,
        corrupted: tally.corrupted,
        unanswered: tally.sent_at.iter().filter(|s| s.is_some()).count() as u64,
        histogram: tally.histogram.clone(),
    })
}

/// A worker: echoes each delivery's body to its `reply-to`, acknowledging it; replies to all
/// the frames that are already there go out in one flush.
async fn work(mut socket: Socket) -> Result<()> {
    loop {
        let Some(frame) = socket.next().await else {
            return Ok(());
        };
        answer_delivery(&mut socket, frame?).await?;
        while let Some(Some(frame)) = socket.next().now_or_never() {
            answer_delivery(&mut socket, frame?).await?;
        }
        socket.flush().await?;
    }
}

async fn answer_delivery(socket: &mut Socket, frame: Frame) -> Result<()> {
    if !(frame.is_text() || frame.is_binary()) {
        return Ok(());
    }
    let Ok(message) = Message::parse(frame.into_data()) else {
        return Ok(());
    };
    let (Some(reply_to), Some(id)) = (message.header("reply-to"), message.header("delivery-id"))
    else {
        return Ok(());
    };
    let mut reply =
        format!("LHTTP/1.0 reply\r\npublish:{reply_to}\r\nack:{id}\r\n\r\n").into_bytes();
    reply.extend_from_slice(message.body());
    socket.feed(Frame::binary(reply)).await?;
    Ok(())
}

/// Requests over one connection to `--url`, `--concurrency` in flight.
async fn over_connection(opts: &Requests, tally: &Arc<Mutex<Tally>>) -> Result<()> {
    let mut socket = connect(&opts.url, &opts.tls, opts.timeout).await?;
    let timeout_ms = opts.timeout.as_millis().max(1);
    let mut next = 0u64;
    let mut in_flight = 0usize;
    let deadline_for = |at: Instant| at + opts.timeout + Duration::from_secs(1);
    let mut last_progress = Instant::now();
    while next < opts.count || in_flight > 0 {
        while in_flight < opts.concurrency && next < opts.count {
            let text = format!(
                "LHTTP/1.0 q\r\npublish:{}\r\nreply-to:\r\nrequest-id:{next}\r\ntimeout:{timeout_ms}\r\n\r\n{}",
                opts.channel,
                body(next, opts.size)
            );
            tally.lock().await.sent_at[next as usize] = Some(Instant::now());
            socket.feed(Frame::text(text)).await?;
            next += 1;
            in_flight += 1;
        }
        socket.flush().await?;
        let frame = match tokio::time::timeout_at(deadline_for(last_progress).into(), socket.next())
            .await
        {
            Err(_) => break, // What is still in flight counts as unanswered.
            Ok(None) => bail!("the server closed the connection"),
            Ok(Some(frame)) => frame?,
        };
        last_progress = Instant::now();
        if !(frame.is_text() || frame.is_binary()) {
            continue;
        }
        let Ok(answer) = Message::parse(frame.into_data()) else {
            tally.lock().await.corrupted += 1;
            continue;
        };
        let Some(seq) = answer.header("request-id").and_then(|id| id.parse().ok()) else {
            continue;
        };
        in_flight = in_flight.saturating_sub(1);
        let outcome = if answer.command() == "error" {
            Err(answer
                .header("status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0))
        } else {
            Ok(answer.body().as_ref())
        };
        tally.lock().await.answer(seq, outcome, opts.size);
    }
    Ok(())
}

/// Requests as HTTP POSTs to a gateway route, `--concurrency` at a time over keep-alive
/// connections.
async fn over_http(opts: &Requests, url: &str, tally: &Arc<Mutex<Tally>>) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(opts.timeout + Duration::from_secs(1))
        .build()
        .context("HTTP client")?;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..opts.concurrency {
        let (client, next, tally, url) =
            (client.clone(), next.clone(), tally.clone(), url.to_owned());
        let (count, size) = (opts.count, opts.size);
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seq >= count {
                    return;
                }
                tally.lock().await.sent_at[seq as usize] = Some(Instant::now());
                let response = client.post(&url).body(body(seq, size)).send().await;
                let outcome = match response {
                    Ok(response) if response.status().is_success() => {
                        match response.bytes().await {
                            Ok(bytes) => Ok(bytes),
                            Err(_) => Err(0),
                        }
                    }
                    Ok(response) => Err(response.status().as_u16()),
                    Err(_) => Err(0),
                };
                let mut tally = tally.lock().await;
                match &outcome {
                    Ok(bytes) => tally.answer(seq, Ok(bytes), size),
                    Err(status) => tally.answer(seq, Err(*status), size),
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("a request task failed")?;
    }
    Ok(())
}
