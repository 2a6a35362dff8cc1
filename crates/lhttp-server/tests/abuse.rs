//! Abuse that each costs the attacker little and the server much, met as a client meets it:
//! HTTP connections held open from one address, messages announced and never finished,
//! floods of bad tokens, and browsers on other sites. Real loopback sockets; bounded in time
//! and count; no timed assertions.

mod common;

use std::time::Duration;

use common::*;
use lhttp_server::{Config, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// A TCP connection to `server` from the loopback address `source`.
async fn tcp_from(server: &TestServer, source: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// What the server sends on `stream` until it closes it or [`WAIT`] passes (a reset counts as
/// the end).
async fn read_all(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// `GET path` on a new connection from `source`; the whole answer.
async fn get_from(server: &TestServer, source: [u8; 4], path: &str) -> String {
    let mut stream = tcp_from(server, source).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    // A refused connection may already be closed: the answer read below says what happened.
    let _ = stream.write_all(request.as_bytes()).await;
    read_all(&mut stream).await
}

/// Waits until the server counts `n` HTTP connections.
async fn wait_http_connections(server: &TestServer, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.handle.http_connection_count() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} HTTP connections, the server has {}",
            server.handle.http_connection_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One address holding `max_http_connections_per_ip` connections open (requests it never
/// finishes, or gateway requests waiting) gets 429 for the next; other addresses are served,
/// WebSocket connections do not count, and a closed connection gives its place back.
#[tokio::test]
async fn http_connections_held_open_from_one_address_are_bounded() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.max_http_connections_per_ip = 3;
    })))
    .await;
    // Upgraded connections are WebSocket connections, not HTTP ones.
    let mut chat = server.client().await;
    let _other_chat = server.client().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = tcp_from(&server, [127, 0, 0, 1]).await;
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        held.push(stream);
    }
    wait_http_connections(&server, 3).await;

    let mut refused = tcp_from(&server, [127, 0, 0, 1]).await;
    let answer = read_all(&mut refused).await;
    assert!(
        answer.starts_with("HTTP/1.1 429") && answer.contains("your address"),
        "{answer:?}"
    );
    let answer = get_from(&server, [127, 0, 0, 1], "/healthz").await;
    assert!(!answer.contains("200 OK"), "{answer:?}");
    // Another address, and the WebSocket clients, are served meanwhile.
    let answer = get_from(&server, [127, 0, 0, 2], "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    chat.subscribe("still-served").await;

    held.pop();
    wait_http_connections(&server, 2).await;
    let answer = get_from(&server, [127, 0, 0, 1], "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(server.metric("http_connections_refused_per_ip_total") >= 2);
    assert_eq!(server.metric("http_connections_refused_total"), 0);
}

/// Everyone together may hold `max_http_connections`; the next connection gets 503.
#[tokio::test]
async fn http_connections_are_bounded_server_wide() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.max_http_connections = 2;
    })))
    .await;
    let _a = tcp_from(&server, [127, 0, 0, 1]).await;
    let _b = tcp_from(&server, [127, 0, 0, 2]).await;
    wait_http_connections(&server, 2).await;
    let mut refused = tcp_from(&server, [127, 0, 0, 3]).await;
    let answer = read_all(&mut refused).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert_eq!(server.metric("http_connections_refused_total"), 1);
    let metrics = server.handle.render_metrics();
    assert_eq!(metric(&metrics, "lhttp_http_connections"), 2);
}
