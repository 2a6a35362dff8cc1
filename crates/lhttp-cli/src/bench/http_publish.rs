//! `lhttp bench http-publish`: K tasks each doing keep-alive `POST /publish` (over `http://`
//! or `https://`) on a connection of their own; one subscriber, on any transport, checks that
//! every accepted message arrives exactly once (order is not checked: K requests race).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::{
    Filler, Output, Tls, connect,
    http1::{Connection, Target},
    parse_digits, payload, progress, push_padded, request,
};

/// Width of the sequence number at the start of each body.
const SEQ_WIDTH: usize = 12;

/// Requests a worker counts before moving the progress bar.
const BAR_STEP: u64 = 64;

/// What `lhttp bench http-publish` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct HttpPublish {
    /// The server's main port (`--url`: `ws://`, `wss://`, `http://` or `https://`); the
    /// publish URL is derived from it.
    pub url: String,
    /// Where the checking subscriber connects (any transport; by default `url`, as a
    /// WebSocket URL).
    pub sub_url: Option<String>,
    pub concurrency: usize,
    pub count: u64,
    pub size: usize,
    pub channel: String,
    pub tls: Tls,
    pub timeout: Duration,
    pub output: Output,
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
            "scenario": "http-publish",
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

/// `http://host:port/path` -> `ws://host:port/path` (`https` -> `wss`); a WebSocket URL as it
/// is.
fn websocket_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_owned()
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
        bail!(
            "--url must be the server's main port, ws://, wss://, http:// or https://, where \
             POST /publish is served (the subscriber may connect elsewhere with --sub-url): \
             {ws_url}"
        );
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
    let target = Target::parse(&url)?;
    let head = format!("LHTTP/1.0 bench\r\npublish:{}\r\n\r\n", opts.channel);

    // The checking subscriber.
    let sub_url = opts
        .sub_url
        .clone()
        .unwrap_or_else(|| websocket_url(&opts.url));
    let mut subscriber = connect(&sub_url, &opts.tls, opts.timeout).await?;
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
                let Some(payload) = payload(&data) else {
                    continue;
                };
                if payload.starts_with(b"probe") {
                    warmed.store(1, Relaxed);
                    continue;
                }
                let Some(seq) = parse_digits(payload.get(..SEQ_WIDTH)) else {
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

    // Warm-up, over HTTP too.
    let deadline = Instant::now() + opts.timeout;
    let mut warm_up = None;
    let probe = format!("{head}probe").into_bytes();
    while warmed.load(Relaxed) == 0 {
        if Instant::now() > deadline {
            bail!("warm-up: the subscriber received no probe in time");
        }
        let posted = tokio::time::timeout(
            opts.timeout,
            post(&mut warm_up, &target, &opts.tls, &probe, opts.timeout),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|posted| posted.map_err(anyhow::Error::msg));
        posted.with_context(|| format!("cannot POST to {url}"))?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(warm_up);

    let next = Arc::new(AtomicU64::new(0));
    let bar = progress::bar(opts.output.progress, opts.count, "requests");
    let started = Instant::now();
    let mut workers = Vec::with_capacity(opts.concurrency);
    for _ in 0..opts.concurrency.max(1) {
        let worker = Worker {
            target: target.clone(),
            tls: opts.tls.clone(),
            head: head.clone(),
            next: next.clone(),
            count: opts.count,
            size: opts.size,
            timeout: opts.timeout,
        };
        workers.push(tokio::spawn(worker.run(bar.clone())));
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
    bar.finish_and_clear();

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

/// One of the K request loops: takes the next sequence number, POSTs its message on the
/// worker's own keep-alive connection, and counts the answer.
struct Worker {
    target: Target,
    tls: Tls,
    /// The lhttp head every body starts with.
    head: String,
    next: Arc<AtomicU64>,
    count: u64,
    size: usize,
    timeout: Duration,
}

impl Worker {
    /// Returns (ok, failed, first failure).
    async fn run(self, bar: indicatif::ProgressBar) -> (u64, u64, Option<String>) {
        let (mut ok, mut failed, mut first_failure) = (0u64, 0u64, None::<String>);
        let mut connection = None;
        let mut body = Vec::with_capacity(self.head.len() + self.size);
        let filler = Filler::new(self.size - SEQ_WIDTH);
        // The bar is told in steps: it reads the clock on each call.
        let (show, mut unshown) = (!bar.is_hidden(), 0u64);
        // One timer for the worker, moved forward for each request: arming a new one per
        // request costs the client more than the rest of its bookkeeping.
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        loop {
            let seq = self.next.fetch_add(1, Relaxed);
            if seq >= self.count {
                break;
            }
            body.clear();
            body.extend_from_slice(self.head.as_bytes());
            push_padded(&mut body, seq, SEQ_WIDTH);
            body.extend_from_slice(filler.of(seq));
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
            let outcome = tokio::select! {
                biased;
                posted = post(&mut connection, &self.target, &self.tls, &body, self.timeout) => posted,
                () = &mut deadline => {
                    // The request may be half sent or half answered: start afresh.
                    connection = None;
                    Err(format!("no answer within {:?}", self.timeout))
                }
            };
            if show {
                unshown += 1;
                if unshown == BAR_STEP {
                    bar.inc(unshown);
                    unshown = 0;
                }
            }
            match outcome {
                Ok(()) => ok += 1,
                Err(error) => {
                    failed += 1;
                    first_failure.get_or_insert(error);
                }
            }
        }
        bar.inc(unshown);
        (ok, failed, first_failure)
    }
}

/// POSTs `body` on `connection` (opened first if there is none, or the last one was closed)
/// and expects 200; on an error the connection is dropped, so the next request opens a new
/// one.
async fn post(
    connection: &mut Option<Connection>,
    target: &Target,
    tls: &Tls,
    body: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    if !connection.as_ref().is_some_and(Connection::reusable) {
        *connection = Some(
            Connection::open(target, tls, timeout)
                .await
                .map_err(|error| format!("{error:#}"))?,
        );
    }
    let Some(open) = connection.as_mut() else {
        return Err("no connection".into());
    };
    match open.post(body).await {
        Ok(answer) if answer.status == 200 => Ok(()),
        Ok(answer) => Err(format!(
            "{} {}",
            answer.status,
            String::from_utf8_lossy(answer.body).trim()
        )),
        Err(error) => {
            *connection = None;
            Err(format!("{error:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(publish_url("tls://127.0.0.1:8083").is_err());
        assert_eq!(
            websocket_url("https://127.0.0.1:8443/"),
            "wss://127.0.0.1:8443/"
        );
        assert_eq!(websocket_url("ws://127.0.0.1/"), "ws://127.0.0.1/");
    }
}
