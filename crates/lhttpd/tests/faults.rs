//! Fault tests against the real `lhttpd` binary: its memory after thousands of abrupt
//! disconnects, and (an `#[ignore]`d measurement, not a test of speed) how much a flooding
//! client slows the deliveries of a calm one.
//!
//! The flood measurement, with the release binary:
//!
//! ```sh
//! cargo test --release -p lhttpd --test faults -- --ignored --nocapture flood
//! ```

#[path = "../../lhttp-server/tests/common/storm.rs"]
mod storm;

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;

/// A running `lhttpd`, killed when dropped.
struct Lhttpd {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Lhttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lhttpd {
    /// Starts the binary on a free loopback port with `env` and waits for `/healthz`.
    async fn start(env: &[(&str, &str)]) -> Lhttpd {
        Lhttpd::start_with(&[], env).await
    }

    /// Starts the binary with `args` and `env`; waits until the main port answers HTTP.
    async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Lhttpd {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_lhttpd"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LHTTPD_") {
                command.env_remove(&name);
            }
        }
        let child = command
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn lhttpd");
        let server = Lhttpd { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.get("/healthz").await.is_none() {
            assert!(Instant::now() < deadline, "lhttpd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    async fn get(&self, path: &str) -> Option<String> {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .ok()?;
        response.text().await.ok()
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").await.expect("/metrics answers");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    /// Resident memory of the process, from /proc/<pid>/status.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Waits (bounded) until no connection and no subscription is left.
    async fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let connections = self.metric("lhttp_connections").await;
            let subscriptions = self.metric("lhttp_subscriptions").await;
            if connections == 0 && subscriptions == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: {connections} connections, {subscriptions} subscriptions"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

/// After 5,000 abrupt disconnects (at every stage of a connection), the server holds no
/// connection or subscription, its memory is back near where it was, and it serves a new
/// client. A leak of one connection's state (about 10 KiB) per client would be about 50 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_near_its_start_after_thousands_of_abrupt_disconnects() {
    let server = Lhttpd::start(&[]).await;
    // Warm up: the allocator and the runtime reach their working size first.
    assert_eq!(storm::storm(server.addr, 1_000, 200).await, 0);
    server.wait_idle().await;
    let before = server.rss_kib();

    assert_eq!(storm::storm(server.addr, 5_000, 200).await, 0);
    server.wait_idle().await;
    let after = server.rss_kib();
    println!("lhttpd RSS: {before} KiB before, {after} KiB after 5,000 abrupt disconnects");
    assert!(
        after <= before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(server.metric("lhttp_connections_opened_total").await, 3_600);
    assert_eq!(server.metric("lhttp_connections_closed_total").await, 3_600);

    // A new client is served as usual.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    ws.send(tungstenite::Message::text(
        "LHTTP/1.0 s\r\nrequest-id:1\r\nsubscribe:fresh\r\n\r\n",
    ))
    .await
    .unwrap();
    let answer = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(answer.starts_with("LHTTP/1.0 ok"), "{answer}");
}

/// Publish-to-delivery latency of a calm publisher (1,000 messages/s for 3 s) to its subscriber,
/// alone and while another client floods the server from one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it with --ignored --nocapture, in release mode"]
async fn flood_slowdown_measurement() {
    println!(
        "scenario                      calm p50     p99     max  received  flood sent/s  flood delivered/s  refused"
    );
    for (name, flood, env) in [
        ("no flood", false, vec![]),
        (
            "flood, rate limit off",
            true,
            vec![("LHTTPD_LIMITS__MESSAGES_PER_SECOND", "0")],
        ),
        ("flood, default rate limit", true, vec![]),
    ] {
        let server = Lhttpd::start(&env).await;
        let report = measure(&server, flood).await;
        let refused = server.metric("lhttp_rate_limited_messages_total").await;
        println!("{name:<28} {report}  {refused:>7}");
    }
}

async fn connect(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Subscribes `ws` to `channel` and waits for the confirmation.
async fn subscribe(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    channel: &str,
) {
    ws.send(tungstenite::Message::text(format!(
        "LHTTP/1.0 s\r\nrequest-id:sub\r\nsubscribe:{channel}\r\n\r\n"
    )))
    .await
    .unwrap();
    loop {
        let frame = ws.next().await.unwrap().unwrap();
        if frame.is_text() && frame.into_text().unwrap().contains("request-id:sub") {
            return;
        }
    }
}

async fn measure(server: &Lhttpd, flood: bool) -> String {
    let url = server.ws_url();
    let epoch = Instant::now();
    let mut calm_sub = connect(&url).await;
    subscribe(&mut calm_sub, "calm").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flood_tasks = Vec::new();
    if flood {
        let mut flood_sub = connect(&url).await;
        subscribe(&mut flood_sub, "flood").await;
        let counting = stop.clone();
        flood_tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = counting.cancelled() => return n,
                    frame = flood_sub.next() => match frame {
                        Some(Ok(_)) => n += 1,
                        _ => return n,
                    },
                }
            }
        }));
        let (mut sink, mut stream) = connect(&url).await.split();
        tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        let flooding = stop.clone();
        flood_tasks.push(tokio::spawn(async move {
            let frame = tungstenite::Message::text(format!(
                "LHTTP/1.0 chat\r\npublish:flood\r\n\r\n{}",
                "f".repeat(64)
            ));
            let mut sent = 0u64;
            while !flooding.is_cancelled() {
                for _ in 0..64 {
                    if sink.feed(frame.clone()).await.is_err() {
                        return sent;
                    }
                    sent += 1;
                }
                if sink.flush().await.is_err() {
                    return sent;
                }
            }
            sent
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut calm_pub = connect(&url).await;
    let total = 3_000usize;
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..total {
            tick.tick().await;
            let sent_at = epoch.elapsed().as_nanos();
            calm_pub
                .send(tungstenite::Message::text(format!(
                    "LHTTP/1.0 chat\r\npublish:calm\r\n\r\n{sent_at}"
                )))
                .await
                .unwrap();
        }
        calm_pub
    });
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(total);
    while latencies.len() < total {
        let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(10), calm_sub.next()).await
        else {
            break;
        };
        let Ok(text) = frame.into_text() else {
            continue;
        };
        let Some((_, sent)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let sent: u128 = sent.parse().unwrap();
        latencies.push((epoch.elapsed().as_nanos() - sent) as u64);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = publishing.await;
    stop.cancel();
    let mut flood_numbers = Vec::new();
    for task in flood_tasks {
        flood_numbers.push(task.await.unwrap_or(0));
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |ns| *ns as f64 / 1e6)
    };
    let (delivered, sent) = match flood_numbers[..] {
        [delivered, sent] => (delivered as f64 / elapsed, sent as f64 / elapsed),
        _ => (0.0, 0.0),
    };
    format!(
        "{:>6.2}ms {:>6.2}ms {:>6.2}ms {:>5}/{total} {sent:>12.0} {delivered:>18.0}",
        at(0.5),
        at(0.99),
        at(1.0),
        latencies.len()
    )
}

/// `--metrics-listen` moves `/metrics` and `/healthz` to their own address; the main port
/// answers 404 for them and keeps serving WebSocket clients.
#[tokio::test]
async fn metrics_listen_flag_moves_metrics_and_health() {
    let ops = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let server = Lhttpd::start_with(&["--metrics-listen", &ops.to_string()], &[]).await;
    let status = |url: String| async move { reqwest::get(url).await.map(|r| r.status().as_u16()) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(format!("http://{ops}/healthz")).await.ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the metrics address did not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(format!("http://{ops}/metrics")).await.ok(),
        Some(200)
    );
    let main = server.addr;
    assert_eq!(
        status(format!("http://{main}/metrics")).await.ok(),
        Some(404)
    );
    assert_eq!(
        status(format!("http://{main}/healthz")).await.ok(),
        Some(404)
    );
    assert!(
        tokio_tungstenite::connect_async(server.ws_url())
            .await
            .is_ok()
    );
}
