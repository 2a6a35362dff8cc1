//! Abuse limits as a client meets them: the per-connection message rate (429, then close
//! 1008), connections per IP address, handshake and HTTP request limits, and the separate
//! metrics address. Each limit shows in `/metrics`.

mod common;

use std::time::Duration;

use common::*;
use lhttp_server::{Config, Server};

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// Over the rate, a message gets 429 with its request-id and is not published; within the
/// rate again, the connection works as before.
#[tokio::test]
async fn messages_over_the_rate_get_429_and_are_not_processed() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.messages_per_second = 5;
        c.limits.message_burst = 5;
        c.limits.rate_limit_close_after = 0;
    })))
    .await;
    let mut sub = server.client().await;
    sub.subscribe("rated").await;
    let mut publisher = server.client().await;
    for i in 0..10 {
        publisher
            .send(&format!(
                "LHTTP/1.0 chat\r\nrequest-id:m{i}\r\npublish:rated\r\n\r\nmessage {i}"
            ))
            .await;
    }
    let mut accepted = 0;
    let mut refused = Vec::new();
    for _ in 0..10 {
        let m = publisher.recv().await;
        match m.command() {
            "ok" => accepted += 1,
            "error" => {
                assert_eq!(m.header("status"), Some("429"), "{m:?}");
                assert!(m.header("reason").unwrap().contains("rate"), "{m:?}");
                refused.push(
                    m.header("request-id")
                        .expect("request-id copied")
                        .to_owned(),
                );
            }
            other => panic!("unexpected {other}: {m:?}"),
        }
    }
    // The burst at once, at most one more refilled while sending; the rest refused.
    assert!((5..=6).contains(&accepted), "{accepted} accepted");
    assert_eq!(accepted + refused.len(), 10);
    assert_eq!(refused.last().map(String::as_str), Some("m9"));
    for _ in 0..accepted {
        let m = sub.recv().await;
        assert!(body(&m).starts_with("message "), "{m:?}");
    }
    sub.expect_silence(300).await;
    // Tokens come back at the rate: after a pause the same connection publishes again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher.publish("chat", "rated", "after a pause").await;
    assert_eq!(body(&sub.recv().await), "after a pause");
    let metrics = server.get("/metrics").await.1;
    assert_eq!(
        metric(&metrics, "lhttp_rate_limited_messages_total"),
        refused.len() as u64
    );
    assert_eq!(metric(&metrics, "lhttp_rate_limit_closes_total"), 0);
    assert_eq!(server.handle.connection_count(), 2);
}

/// A server allowing one message a second, closing a connection after 20 refusals.
async fn strict_rate_server() -> TestServer {
    start_with(Server::builder(config(|c: &mut Config| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 1;
        c.limits.rate_limit_close_after = 20;
        c.limits.rate_limit_window_ms = 60_000;
    })))
    .await
}

/// Sends `frames` as fast as the connection takes them (until the server closes it), then
/// expects the rate limit's close with nothing before it: none of these frames is a message,
/// so none has a 429 to answer.
async fn flood_until_closed(
    client: &mut Client,
    frames: impl IntoIterator<Item = tokio_tungstenite::tungstenite::Message>,
) {
    for frame in frames {
        if futures_util::SinkExt::send(&mut client.ws, frame)
            .await
            .is_err()
        {
            break;
        }
    }
    match client.event().await {
        Event::Close(Some(frame)) => assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (1008, "message rate limit exceeded")
        ),
        other => panic!("expected the rate limit's close, got {other:?}"),
    }
}

/// Pings take tokens too: a client flooding them (no message at all) is closed with 1008 like
/// a message flooder, without a 429 for any of them (a ping has nothing to answer to).
#[tokio::test]
async fn a_ping_flood_meets_the_rate_limit() {
    let server = strict_rate_server().await;
    let mut flooder = server.client().await;
    let ping = || tokio_tungstenite::tungstenite::Message::Ping(b"x".to_vec().into());
    flood_until_closed(&mut flooder, (0..100).map(|_| ping())).await;
    let metrics = server.get("/metrics").await.1;
    assert_eq!(metric(&metrics, "lhttp_rate_limit_closes_total"), 1);
    assert!(metric(&metrics, "lhttp_rate_limited_messages_total") >= 20);
}

/// So do fragments: a message that never ends, sent as empty continuation frames for ever,
/// grows nothing, so no size limit stops it; the rate limit does, one token per frame.
#[tokio::test]
async fn endless_empty_fragments_meet_the_rate_limit() {
    use tokio_tungstenite::tungstenite::{
        Message as Frame,
        protocol::frame::{
            Frame as RawFrame,
            coding::{Data, OpCode},
        },
    };
    let server = strict_rate_server().await;
    let mut flooder = server.client().await;
    let fragment = |kind| Frame::Frame(RawFrame::message(Vec::new(), OpCode::Data(kind), false));
    let continued = (0..100).map(|_| fragment(Data::Continue));
    flood_until_closed(
        &mut flooder,
        std::iter::once(fragment(Data::Text)).chain(continued),
    )
    .await;
}

/// A client that keeps sending whatever the 429 answers say is closed with 1008; the other
/// clients do not notice.
#[tokio::test]
async fn persistent_flooding_closes_the_connection_with_1008() {
    let server = strict_rate_server().await;
    let mut other = server.client().await;
    other.subscribe("calm").await;
    let mut flooder = server.client().await;
    for _ in 0..100 {
        if futures_util::SinkExt::send(
            &mut flooder.ws,
            tokio_tungstenite::tungstenite::Message::text(
                "LHTTP/1.0 chat\r\npublish:calm\r\n\r\nx",
            ),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    let mut errors = 0;
    let (code, reason) = loop {
        match flooder.event().await {
            Event::Message(m) if m.command() == "error" => {
                assert_eq!(m.header("status"), Some("429"));
                errors += 1;
            }
            Event::Close(Some(frame)) => break (u16::from(frame.code), frame.reason.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (code, reason.as_str()),
        (1008, "message rate limit exceeded")
    );
    assert_eq!(
        errors, 20,
        "one 429 per refused message, the last one included"
    );
    // The one message within the rate was delivered; the rest were not.
    assert_eq!(body(&other.recv().await), "x");
    other.expect_silence(200).await;
    server.wait_connections(1).await;
    let metrics = server.get("/metrics").await.1;
    assert_eq!(metric(&metrics, "lhttp_rate_limit_closes_total"), 1);
    assert_eq!(metric(&metrics, "lhttp_rate_limited_messages_total"), 20);
    other.subscribe("still-served").await;
}

/// Reads what the server sends until it closes the connection (bounded by [`WAIT`]).
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&received).into_owned()
}

/// A WebSocket handshake request with `extra` header lines.
fn handshake(extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Connects a WebSocket client from a chosen loopback source address.
async fn connect_from(
    server: &TestServer,
    source: [u8; 4],
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(server.url("/"), tcp).await?;
    // Leaked on purpose for the test's duration: the connection stays open.
    std::mem::forget(ws);
    Ok(())
}

/// One address may hold `max_connections_per_ip` connections; the next gets 429, other
/// addresses are not affected, and a closed connection gives its place back.
#[tokio::test]
async fn connections_per_ip_are_limited_and_given_back() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.max_connections_per_ip = 2;
    })))
    .await;
    let loopback = "127.0.0.1".parse().unwrap();
    let first = server.client().await;
    let mut second = server.client().await;
    match tokio_tungstenite::connect_async(server.url("/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("your address"), "{body}");
        }
        other => panic!("a third connection from one address must be refused, got {other:?}"),
    }
    assert_eq!(server.handle.connections_from(loopback), 2);
    // Another loopback address is another client (as `lhttp bench` can spread its connections).
    connect_from(&server, [127, 0, 0, 2])
        .await
        .expect("another address connects");
    // The refused client did not disturb the others.
    second.subscribe("fine").await;
    first.close().await;
    server.wait_connections(2).await;
    assert_eq!(server.handle.connections_from(loopback), 1);
    let _again = server.client().await;
    let metrics = server.get("/metrics").await.1;
    assert_eq!(
        metric(&metrics, "lhttp_connections_refused_per_ip_total"),
        1
    );
    assert_eq!(metric(&metrics, "lhttp_connections_refused_total"), 0);
}

/// A client that opens a TCP connection and sends its head slowly, or nothing at all, is
/// disconnected after the handshake timeout; so is an idle kept-alive HTTP connection.
#[tokio::test]
async fn slow_handshakes_and_idle_http_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.handshake_timeout_ms = 300;
    })))
    .await;
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    for stream in [&mut silent, &mut slow] {
        let answer = read_until_closed(stream).await;
        assert!(!answer.contains("101"), "{answer}");
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A kept-alive connection is served, then closed once idle for as long.
    let mut kept = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The server still accepts WebSocket clients and counts the two timeouts only.
    let mut client = server.client().await;
    client.subscribe("after").await;
    let metrics = server.get("/metrics").await.1;
    assert_eq!(metric(&metrics, "lhttp_handshake_timeouts_total"), 2);
}

/// Request heads with too many headers or too many bytes get 431, WebSocket handshakes
/// included; the server goes on serving.
#[tokio::test]
async fn oversized_request_heads_get_431() {
    use tokio::io::AsyncWriteExt;
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.http_max_headers = 20;
        c.limits.http_max_header_bytes = 4096;
    })))
    .await;
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long = format!("Cookie: {}\r\n", "c".repeat(5000));
    for extra in [many, long] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(handshake(&extra).as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }
    // Within the limits the same handshake succeeds.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(handshake("X-A: 1\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut head)
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    server.client().await.subscribe("fine").await;
}

/// A `POST /publish` body that does not arrive in time is answered 408; nothing is published.
#[tokio::test]
async fn slow_publish_bodies_get_408() {
    use tokio::io::AsyncWriteExt;
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.http_body_timeout_ms = 300;
    })))
    .await;
    let mut sub = server.client().await;
    sub.subscribe("slow").await;
    let message = "LHTTP/1.0 chat\r\npublish:slow\r\n\r\nnever complete";
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        message.len() + 100
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(message.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    sub.expect_silence(100).await;
    let (status, _) = server.post("/publish", message).await;
    assert_eq!(status, 200);
    assert_eq!(body(&sub.recv().await), "never complete");
    let metrics = server.get("/metrics").await.1;
    assert_eq!(metric(&metrics, "lhttp_http_body_timeouts_total"), 1);
}

/// With a metrics address, `/metrics` and `/healthz` are served there and no longer on the
/// main port; the metrics port serves nothing else.
#[tokio::test]
async fn metrics_and_health_on_their_own_address() {
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let server = start_with_metrics(Server::builder(Config::default()), ops).await;
    let get = |url: String| async move {
        let response = reqwest::get(url).await.expect("HTTP request");
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let (status, metrics) = get(format!("http://{ops_addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("lhttp_connections 0"), "{metrics}");
    assert_eq!(get(format!("http://{ops_addr}/healthz")).await.0, 200);
    assert_eq!(server.get("/metrics").await.0, 404);
    assert_eq!(server.get("/healthz").await.0, 404);
    // WebSocket and publishing stay on the main port only.
    let mut client = server.client().await;
    client.subscribe("main").await;
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{ops_addr}/"))
            .await
            .is_err()
    );
    let (status, _) = server
        .post("/publish", "LHTTP/1.0 c\r\npublish:main\r\n\r\nhi")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body(&client.recv().await), "hi");
    let (_, metrics) = get(format!("http://{ops_addr}/metrics")).await;
    assert!(metrics.contains("lhttp_connections 1"), "{metrics}");
}

/// Counts that size the server's queues and semaphores are refused with a message when they
/// are beyond what the runtime supports, instead of panicking at start or at the first
/// connection (found by reviewing what the `config` fuzz target feeds `Server::build`).
#[test]
fn absurd_counts_are_configuration_errors_not_panics() {
    let huge = 9_000_000_000_000_000_000usize;
    let changes: [fn(&mut Config, usize); 5] = [
        |c, n| c.limits.max_connections = n,
        |c, n| c.limits.outbound_queue = n,
        |c, n| c.upstream.max_in_flight = n,
        |c, n| c.upstream.max_in_flight_per_connection = n,
        |c, n| {
            c.cluster.nats = vec!["nats://127.0.0.1:4222".into()];
            c.cluster.max_pending = n;
        },
    ];
    for change in changes {
        let mut config = Config::default();
        change(&mut config, huge);
        let built = std::panic::catch_unwind(|| Server::builder(config).build().map(|_| ()));
        match built {
            Ok(Err(error)) => assert!(error.to_string().contains("at most"), "{error}"),
            Ok(Ok(())) => panic!("a count of {huge} was accepted"),
            Err(_) => panic!("building with a count of {huge} panicked"),
        }
    }
}
