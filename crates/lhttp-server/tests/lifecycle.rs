//! Slow consumers, graceful shutdown, and the HTTP endpoints.

mod common;

use std::time::Duration;

use common::*;
use lhttp_server::{Config, Server};
use tokio::net::TcpSocket;

/// A subscriber that stops reading is disconnected once its queue is full; it neither grows the
/// server's memory without bound nor slows a fast subscriber of the same channel, who receives
/// everything in order.
#[tokio::test]
async fn slow_consumer_is_cut_off_and_fast_subscriber_gets_everything() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.max_message_size = 8 * 1024;
        c.limits.outbound_queue = 64;
        c.limits.outbound_queue_bytes = 64 * 1024;
    })))
    .await;

    // The slow client: a tiny receive buffer and it never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(server.url("/"), stream)
        .await
        .unwrap();
    let mut slow = Client { ws, next_id: 0 };
    slow.subscribe("feed").await;

    let mut fast = server.client().await;
    fast.subscribe("feed").await;

    // The publisher sends in batches and the fast subscriber reads each batch, so it always
    // keeps up; the slow one reads nothing.
    const N: usize = 3000;
    const BATCH: usize = 10;
    let mut publisher = server.client().await;
    let payload = "p".repeat(4000);
    for batch in 0..N / BATCH {
        for i in batch * BATCH..(batch + 1) * BATCH {
            publisher
                .send(&format!(
                    "LHTTP/1.0 tick\r\npublish:feed\r\nn:{i}\r\n\r\n{payload}"
                ))
                .await;
        }
        for i in batch * BATCH..(batch + 1) * BATCH {
            let m = fast.recv().await;
            assert_eq!(
                m.header("n"),
                Some(i.to_string().as_str()),
                "fast subscriber out of order"
            );
        }
    }

    // The slow one has been removed from the channel; the fast one is still there.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.handle.hub().subscriber_count("feed") != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow consumer was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains("lhttp_slow_consumers_total 1\n"),
        "{metrics}"
    );
    fast.subscribe("still-served").await;

    // When the slow client finally reads, the stream ends long before all N messages: what was
    // queued for it was bounded.
    let mut received = 0;
    loop {
        match slow.event().await {
            Event::Message(m) if m.command() == "tick" => received += 1,
            Event::Message(_) => {}
            Event::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                break;
            }
            Event::Close(None) | Event::Gone => break,
            Event::Garbage(g) => panic!("garbage {g:?}"),
        }
    }
    assert!(received < N, "the slow consumer was never cut off");
}

/// Graceful shutdown: what is queued is delivered, then close 1012 with a retry hint; new
/// connections are refused; `run` returns.
#[tokio::test]
async fn graceful_shutdown_flushes_then_closes_with_1012_and_a_retry_hint() {
    let mut server = start().await;
    let mut sub = server.client().await;
    sub.subscribe("last").await;
    for i in 0..100 {
        let message = lhttp_server::proto::Message::builder("bye")
            .header("publish", "last")
            .body(format!("{i}"))
            .build()
            .unwrap();
        server.handle.publish(&message).unwrap();
    }
    server.handle.shutdown();
    for i in 0..100 {
        assert_eq!(body(&sub.recv().await), i.to_string());
    }
    let (code, reason) = sub.recv_close().await;
    assert_eq!(code, 1012, "{reason}");
    let hint: u64 = reason
        .strip_prefix("server restarting; retry in ")
        .and_then(|r| r.strip_suffix(" ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no retry hint: {reason}"));
    assert!((250..=3750).contains(&hint), "{hint}");
    server.stopped().await;
    assert!(
        tokio_tungstenite::connect_async(server.url("/"))
            .await
            .is_err()
    );
}

/// Lame duck: with `server.drain_ms`, `/healthz` says "draining" and new connections are
/// refused at once, while the clients are closed at moments of their own over the drain, each
/// with a retry hint, not all at once; then the server stops.
#[tokio::test]
async fn a_drain_spreads_the_closes_while_healthz_says_draining() {
    const CLIENTS: usize = 24;
    const DRAIN_MS: u64 = 1600;
    let mut server = start_with(lhttp_server::Server::builder(config(|c| {
        c.server.drain_ms = DRAIN_MS;
    })))
    .await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(server.client().await);
    }
    let began = std::time::Instant::now();
    server.handle.shutdown();
    assert_eq!(
        server.get("/healthz").await,
        (503, r#"{"status":"draining"}"#.to_owned())
    );
    let refused = tokio_tungstenite::connect_async(server.url("/")).await;
    assert!(refused.is_err(), "a new connection during the drain");
    let waiting: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let (code, reason) = client.recv_close().await;
                (began.elapsed(), code, reason)
            })
        })
        .collect();
    let mut moments = Vec::new();
    let mut hints = std::collections::HashSet::new();
    for waiting in waiting {
        let (at, code, reason) = waiting.await.unwrap();
        assert_eq!(code, 1012, "{reason}");
        moments.push(at);
        hints.insert(reason);
    }
    server.stopped().await;
    moments.sort();
    let half = Duration::from_millis(DRAIN_MS / 2);
    assert!(
        moments[0] < half,
        "the first close came at {:?}",
        moments[0]
    );
    assert!(
        moments[CLIENTS - 1] > half,
        "the last close came at {:?}",
        moments[CLIENTS - 1]
    );
    assert!(hints.len() > 1, "every client got the same hint: {hints:?}");
}

#[tokio::test]
async fn healthz_metrics_and_page() {
    let server = start().await;
    assert_eq!(
        server.get("/healthz").await,
        (200, r#"{"status":"ok"}"#.to_owned())
    );
    let mut c = server.client().await;
    c.subscribe("m1 m2").await;
    c.publish("x", "m1", "hello").await;
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "lhttp_connections 1\n",
        "lhttp_channels 2\n",
        "lhttp_subscriptions 2\n",
        "lhttp_deliveries_total 1\n",
        "lhttp_messages_received_total 2\n",
        "# TYPE lhttp_messages_published_total counter\n",
        "# TYPE process_cpu_seconds_total counter\n",
        // Two small messages received: the subscribe and the publish.
        "# TYPE lhttp_message_size_bytes histogram\n",
        "lhttp_message_size_bytes_bucket{le=\"64\"} 2\n",
        "lhttp_message_size_bytes_bucket{le=\"+Inf\"} 2\n",
        "lhttp_message_size_bytes_count 2\n",
        // The one published copy was written, well within 10 s of its publish; the answers
        // (ok) are not publishes.
        "# TYPE lhttp_delivery_latency_seconds histogram\n",
        "lhttp_delivery_latency_seconds_bucket{le=\"10\"} 1\n",
        "lhttp_delivery_latency_seconds_count 1\n",
        "# TYPE process_open_fds gauge\n",
        "# TYPE process_max_fds gauge\n",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_open_fds") >= 3.0);
    let started = value("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
    assert!(metrics.contains(&format!(
        "lhttp_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
    // Prometheus naming: counters end in `_total`, a unit comes last (`_bytes`, or
    // `_bytes_total` for a counter of bytes), never in the middle.
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
        let stem = name.trim_end_matches("_total");
        if let Some(at) = stem.find("bytes") {
            assert_eq!(
                at + "bytes".len(),
                stem.len(),
                "a unit in the middle: {line}"
            );
        }
        if let Some(at) = stem.find("seconds") {
            assert_eq!(
                at + "seconds".len(),
                stem.len(),
                "a unit in the middle: {line}"
            );
        }
    }
    // An embedder's server serves no page it did not add (lhttpd adds the chat demo).
    assert_eq!(server.get("/").await.0, 404);
    assert_eq!(server.get("/nope").await.0, 404);
}

#[tokio::test]
async fn pages_an_embedder_adds_are_served() {
    let page = "<!doctype html><title>my app</title>";
    let server = start_with(Server::builder(Config::default()).static_file(
        "/",
        "text/html; charset=utf-8",
        page,
    ))
    .await;
    let response = reqwest::get(server.http("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.text().await.unwrap(), page);
    assert_eq!(server.get("/chat.js").await.0, 404);
}

#[tokio::test]
async fn http_publish_errors() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.max_message_size = 1024
    })))
    .await;
    let (status, body) = server.post("/publish", "not lhttp").await;
    assert_eq!(status, 400);
    assert!(body.contains("LHTTP/1.0"), "{body}");
    let (status, body) = server
        .post("/publish", "LHTTP/1.0 chat\r\n\r\nno channel")
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("publish"), "{body}");
    let (status, _) = server
        .post("/publish", "LHTTP/1.0 chat\r\npublish:a >\r\n\r\nwildcard")
        .await;
    assert_eq!(status, 400);
    let big = format!("LHTTP/1.0 chat\r\npublish:a\r\n\r\n{}", "x".repeat(2000));
    assert_eq!(server.post("/publish", big.clone()).await.0, 413);
    // Without a Content-Length (chunked), the limit still holds.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, _) = server
        .post("/publish", reqwest::Body::wrap_stream(stream))
        .await;
    assert_eq!(status, 413);
    let response = reqwest::get(server.http("/publish")).await.unwrap();
    assert_eq!(response.status(), 405);
}

/// A client that answers nothing (not even pings) is closed after the idle timeout; one whose
/// WebSocket stack answers pings stays, even if it never sends a message.
#[tokio::test]
async fn idle_clients_are_closed_and_live_ones_kept() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.server.ping_interval_ms = 100;
        c.server.idle_timeout_ms = 300;
    })))
    .await;
    let mut silent = server.client().await;
    let mut live = server.client().await;
    // `live` is polled (its stack answers pings); `silent` is not looked at for a while.
    let until = tokio::time::Instant::now() + Duration::from_millis(900);
    while tokio::time::Instant::now() < until {
        if let Ok(Some(frame)) = tokio::time::timeout(
            Duration::from_millis(50),
            futures_util::StreamExt::next(&mut live.ws),
        )
        .await
        {
            let frame = frame.expect("live connection stays open");
            assert!(frame.is_ping(), "only pings expected, got {frame:?}");
        }
    }
    let (code, reason) = silent.recv_close().await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    live.subscribe("still-here").await;
    server.wait_connections(1).await;
}

/// With an API key, `POST /publish` needs `Authorization: Bearer <key>`.
#[tokio::test]
async fn http_publish_requires_the_api_key_when_one_is_set() {
    let key = "0123456789abcdef-key";
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.server.api_key = Some(key.into())
    })))
    .await;
    let mut sub = server.client().await;
    sub.subscribe("secure").await;
    let message = "LHTTP/1.0 chat\r\npublish:secure\r\n\r\nsigned";
    let post = |auth: Option<&str>| {
        let mut request = reqwest::Client::new()
            .post(server.http("/publish"))
            .body(message);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let refused = post(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        post(Some("Bearer wrong-key-0123456789"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(Some(key)).await.unwrap().status(),
        401,
        "the Bearer scheme is required"
    );
    sub.expect_silence(100).await;
    let accepted = post(Some(&format!("Bearer {key}"))).await.unwrap();
    assert_eq!(accepted.status(), 200);
    assert_eq!(body(&sub.recv().await), "signed");
    // A short key is a configuration error.
    let short = config(|c: &mut Config| c.server.api_key = Some("short".into()));
    assert!(Server::builder(short).build().is_err());
}

/// With an origin allow-list, browsers on other sites cannot open connections.
#[tokio::test]
async fn origin_allow_list() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.server.allowed_origins = vec!["https://chat.example.com".into()]
    })))
    .await;
    let connect = |origin: Option<&'static str>| {
        let mut request = server.url("/").into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    match connect(Some("https://evil.example.net")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("a foreign origin must be refused, got {other:?}"),
    }
    assert!(connect(Some("https://chat.example.com")).await.is_ok());
    assert!(
        connect(None).await.is_ok(),
        "non-browser clients send no Origin"
    );
}
