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

const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";

/// A token signed with [`SECRET`] for `sub`, valid for a minute.
fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token whose signature is wrong (as a forger's is).
fn forged(sub: &str) -> String {
    let good = token(sub);
    let (signed, _) = good.rsplit_once('.').unwrap();
    format!("{signed}.{}", "A".repeat(43))
}

/// A server that verifies HS256 tokens, with `change` applied.
async fn auth_server(change: impl FnOnce(&mut Config)) -> TestServer {
    start_with(Server::builder(config(|c: &mut Config| {
        c.auth.hs256_secret = Some(SECRET.into());
        change(c);
    })))
    .await
}

/// Opens a WebSocket from `source`, with `Authorization: Bearer <token>` if one is given.
async fn upgrade_from(
    server: &TestServer,
    source: [u8; 4],
    token: Option<&str>,
) -> Result<Client, (u16, String)> {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
    let mut request = server.url("/").into_client_request().unwrap();
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.headers_mut().insert("authorization", value);
    }
    let tcp = tcp_from(server, source).await;
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(Client {
            ws: tokio_tungstenite::WebSocketStream::from_raw_socket(
                tokio_tungstenite::MaybeTlsStream::Plain(ws.into_inner()),
                tungstenite::protocol::Role::Client,
                None,
            )
            .await,
            next_id: 0,
        }),
        Err(tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(other) => panic!("upgrade: {other}"),
    }
}

/// Sends `auth` with `token`; the answer's status and reason (200 for `ok`).
async fn auth(client: &mut Client, token: &str) -> (u16, String) {
    let (answer, _) = client
        .request(&format!("LHTTP/1.0 auth\r\ntoken:{token}\r\n\r\n"))
        .await;
    if answer.command() == "ok" {
        return (200, String::new());
    }
    let status = answer.header("status").unwrap().parse().unwrap();
    (status, answer.header("reason").unwrap().to_owned())
}

/// A socket that sends bad token after bad token is answered 401 a few times, then closed:
/// it cannot make the server verify signatures for ever.
#[tokio::test]
async fn a_connection_that_keeps_failing_to_authenticate_is_closed() {
    let server = auth_server(|_| {}).await;
    let mut attacker = server.client().await;
    for _ in 0..4 {
        let (status, reason) = auth(&mut attacker, &forged("mallory")).await;
        assert_eq!((status, reason.as_str()), (401, "invalid token signature"));
    }
    attacker
        .send(&format!(
            "LHTTP/1.0 auth\r\ntoken:{}\r\n\r\n",
            forged("mallory")
        ))
        .await;
    let (status, _, _) = attacker.recv_error().await;
    assert_eq!(status, 401);
    assert_eq!(
        attacker.recv_close().await,
        (1008, "too many failed authentications".to_owned())
    );
    assert_eq!(server.metric("auth_failure_closes_total"), 1);
    // A client with a good token is not affected.
    let mut user = server.client().await;
    assert_eq!(auth(&mut user, &token("alice")).await.0, 200);
}

/// An address with many recent failures gets 429, unverified, for every token it presents, on
/// any connection and at the upgrade; it may still connect without a token, and other
/// addresses are served as usual.
#[tokio::test]
async fn an_address_with_many_failed_authentications_is_refused_for_a_while() {
    let server = auth_server(|c| {
        c.limits.auth_failures_per_ip = 3;
        c.limits.auth_failures_per_connection = 0;
    })
    .await;
    let mut attacker = server.client().await;
    for _ in 0..3 {
        assert_eq!(auth(&mut attacker, &forged("mallory")).await.0, 401);
    }
    let (status, reason) = auth(&mut attacker, &forged("mallory")).await;
    assert_eq!(status, 429);
    assert!(
        reason.contains("too many failed authentications"),
        "{reason}"
    );
    // Not even a good token is verified from there now.
    assert_eq!(auth(&mut attacker, &token("mallory")).await.0, 429);
    let mut second = server.client().await;
    assert_eq!(auth(&mut second, &token("alice")).await.0, 429);
    match upgrade_from(&server, [127, 0, 0, 1], Some(&token("alice"))).await {
        Err((429, body)) => assert!(body.contains("too many failed"), "{body}"),
        Err(other) => panic!("expected 429, got {other:?}"),
        Ok(_) => panic!("a token from a throttled address was accepted"),
    }
    assert!(upgrade_from(&server, [127, 0, 0, 1], None).await.is_ok());
    // Another address authenticates, at the upgrade and with `auth`.
    assert!(
        upgrade_from(&server, [127, 0, 0, 2], Some(&token("bob")))
            .await
            .is_ok()
    );
    let mut other = upgrade_from(&server, [127, 0, 0, 2], None).await.unwrap();
    assert_eq!(auth(&mut other, &token("bob")).await.0, 200);
    assert_eq!(server.metric("auth_failures_total"), 3);
    assert_eq!(server.metric("auth_throttled_total"), 4);
}

/// A token longer than `limits.max_token_bytes` is refused before it is decoded, at the
/// upgrade and in `auth`.
#[tokio::test]
async fn oversized_tokens_are_refused_unparsed() {
    let server = auth_server(|_| {}).await;
    let (signed, signature) = token("alice")
        .rsplit_once('.')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    let long = format!("{signed}.{signature}{}", "A".repeat(8 * 1024));
    let mut client = server.client().await;
    assert_eq!(
        auth(&mut client, &long).await,
        (401, "token too long".to_owned())
    );
    match upgrade_from(&server, [127, 0, 0, 1], Some(&long)).await {
        Err((401, body)) => assert_eq!(body, "token too long\n"),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

/// A WebSocket connection over a raw TCP stream, for writing frames a client library would
/// never send: a frame cut short, fragments that never end.
async fn raw_websocket(server: &TestServer, source: [u8; 4]) -> TcpStream {
    let mut stream = tcp_from(server, source).await;
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        let read = tokio::time::timeout(WAIT, stream.read_exact(&mut byte)).await;
        read.expect("the server answers the handshake").unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream
}

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// The header of a masked client frame announcing `len` payload bytes.
fn frame_header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut header = vec![u8::from(fin) << 7 | opcode];
    match len {
        0..=125 => header.push(0x80 | len as u8),
        126..=65535 => {
            header.push(0x80 | 126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(0x80 | 127);
            header.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    header.extend_from_slice(&MASK);
    header
}

/// `payload` masked as the `offset`-th byte onwards of a frame's payload.
fn masked(payload: &[u8], offset: usize) -> Vec<u8> {
    payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ MASK[(offset + i) % 4])
        .collect()
}

/// A whole masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_header(fin, opcode, payload.len());
    frame.extend(masked(payload, 0));
    frame
}

/// Reads server frames until a close frame; its code and reason. Panics if none comes within
/// [`WAIT`].
async fn read_close(stream: &mut (impl AsyncReadExt + Unpin)) -> (u16, String) {
    let reading = async {
        loop {
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await.expect("a close frame");
            let len = match head[1] & 0x7F {
                126 => {
                    let mut len = [0u8; 2];
                    stream.read_exact(&mut len).await.unwrap();
                    u16::from_be_bytes(len) as usize
                }
                127 => {
                    let mut len = [0u8; 8];
                    stream.read_exact(&mut len).await.unwrap();
                    u64::from_be_bytes(len) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).await.unwrap();
            if head[0] & 0x0F == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
        }
    };
    tokio::time::timeout(WAIT, reading)
        .await
        .expect("the server closed the connection in time")
}

/// A message that began and never ended is closed at its deadline, whether the client stalls
/// in the middle of a frame or between fragments while it keeps pinging; a client whose
/// messages are slow to come but each complete is not.
#[tokio::test]
async fn an_unfinished_message_is_closed_at_its_deadline() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.message_timeout_ms = 800;
    })))
    .await;

    let mut stalled = raw_websocket(&server, [127, 0, 0, 1]).await;
    let mut start = frame_header(true, 0x1, 1000);
    start.extend(masked(b"LHTTP/1.0 chat\r\n", 0));
    stalled.write_all(&start).await.unwrap();

    let fragments = raw_websocket(&server, [127, 0, 0, 1]).await;
    let (mut fragments_in, mut fragments_out) = fragments.into_split();
    fragments_out
        .write_all(&frame(false, 0x1, b"LHTTP/1.0 chat\r\n"))
        .await
        .unwrap();
    // Pings between fragments keep the connection alive, not the message.
    let pinging = tokio::spawn(async move {
        for _ in 0..40 {
            if fragments_out
                .write_all(&frame(true, 0x9, b""))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(
        read_close(&mut fragments_in).await,
        (1008, "message not completed in time".to_owned())
    );
    pinging.abort();

    // A slow but honest client: complete messages, some split across writes, for longer than
    // the deadline in all.
    let mut honest = server.client().await;
    for _ in 0..10 {
        honest.subscribe("slow").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut split = raw_websocket(&server, [127, 0, 0, 1]).await;
    let message = frame(true, 0x1, b"LHTTP/1.0 sub\r\nsubscribe:split\r\n\r\n");
    split.write_all(&message[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    split.write_all(&message[10..]).await.unwrap();
    wait_subscribers(&server, "split", 1).await;

    assert_eq!(
        read_close(&mut stalled).await,
        (1008, "message not completed in time".to_owned())
    );
    honest.subscribe("still-open").await;
    assert_eq!(server.metric("message_timeouts_total"), 2);
}

/// Large messages announced and left unfinished hold at most
/// `limits.unfinished_message_bytes` between them; each holds its own size, not twice it; the
/// connection that would go over is closed with 1013, others are served, and the bytes come
/// back when the connections go.
#[tokio::test]
async fn unfinished_large_messages_share_a_budget() {
    const FRAME: usize = 65_000;
    // The frame's header: 2 bytes, a 16-bit length and the mask.
    const FRAME_BYTES: usize = FRAME + 2 + 2 + 4;
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.unfinished_message_bytes = 3 * FRAME_BYTES + 1000;
    })))
    .await;
    let held_bytes = || {
        metric(
            &server.handle.render_metrics(),
            "lhttp_unfinished_message_bytes",
        )
    };
    let wait_held = |expected: usize| async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        while held_bytes() != expected as u64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {expected} bytes held, the server holds {}",
                held_bytes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // Each sends more than half of a 65,000-byte frame and stops.
    let mut stalled = Vec::new();
    for source in 1..=3u8 {
        let mut stream = raw_websocket(&server, [127, 0, 0, source]).await;
        let mut start = frame_header(true, 0x2, FRAME);
        start.extend(masked(&vec![b'a'; 40_000], 0));
        stream.write_all(&start).await.unwrap();
        wait_held(source as usize * FRAME_BYTES).await;
        stalled.push(stream);
    }
    let mut refused = raw_websocket(&server, [127, 0, 0, 4]).await;
    let mut start = frame_header(true, 0x2, FRAME);
    start.extend(masked(&vec![b'a'; 40_000], 0));
    refused.write_all(&start).await.unwrap();
    assert_eq!(
        read_close(&mut refused).await,
        (1013, "server busy: too many unfinished messages".to_owned())
    );
    assert_eq!(server.metric("unfinished_budget_closes_total"), 1);
    // Small messages need no budget.
    let mut chat = server.client().await;
    chat.subscribe("room").await;

    drop(stalled.pop());
    wait_held(2 * FRAME_BYTES).await;
    // With room again, a whole large message goes through.
    let body = "b".repeat(FRAME - 100);
    chat.publish("chat", "room", &body).await;
    drop(stalled);
    wait_held(0).await;
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) and returns the answer.
async fn http_raw(server: &TestServer, request: &str) -> String {
    let mut stream = tcp_from(server, [127, 0, 0, 1]).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    read_all(&mut stream).await
}

/// A WebSocket upgrade with these `Host` and `Origin` headers: the answer's status line.
async fn upgrade_status(server: &TestServer, host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let mut stream = tcp_from(server, [127, 0, 0, 1]).await;
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n") {
        match tokio::time::timeout(WAIT, stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

/// On the default setup (loopback, no `allowed_origins`) a page on another site cannot open a
/// WebSocket from its visitor's browser, nor after pointing its own name at 127.0.0.1; the
/// server's own page, pages on loopback and clients that are not browsers can.
#[tokio::test]
async fn pages_of_other_sites_cannot_open_websockets_by_default() {
    let server = start().await;
    let own = format!("127.0.0.1:{}", server.addr.port());
    let refused = "HTTP/1.1 403 Forbidden";
    let accepted = "HTTP/1.1 101 Switching Protocols";
    assert_eq!(
        upgrade_status(&server, &own, Some("https://evil.example")).await,
        refused
    );
    assert_eq!(upgrade_status(&server, &own, Some("null")).await, refused);
    let rebound = format!("evil.example:{}", server.addr.port());
    let rebound_origin = format!("http://{rebound}");
    assert_eq!(
        upgrade_status(&server, &rebound, Some(&rebound_origin)).await,
        refused
    );

    assert_eq!(upgrade_status(&server, &own, None).await, accepted);
    let own_origin = format!("http://{own}");
    assert_eq!(
        upgrade_status(&server, &own, Some(&own_origin)).await,
        accepted
    );
    let local_page = Some("http://localhost:3000");
    assert_eq!(upgrade_status(&server, &own, local_page).await, accepted);

    // `allowed_origins` says otherwise.
    let open = start_with(Server::builder(config(|c: &mut Config| {
        c.server.allowed_origins = vec!["*".into()];
    })))
    .await;
    let own = format!("127.0.0.1:{}", open.addr.port());
    assert_eq!(
        upgrade_status(&open, &own, Some("https://evil.example")).await,
        accepted
    );
}

/// A page on another site cannot make its visitor's browser publish (a text/plain form post
/// needs no CORS preflight), nor reach `/publish` or `/metrics` by DNS rebinding; curl and
/// back ends publish as before.
#[tokio::test]
async fn cross_site_posts_and_rebound_names_are_refused_on_loopback() {
    let server = start().await;
    let mut subscriber = server.client().await;
    subscriber.subscribe("room").await;
    let port = server.addr.port();
    let post = |host: String, extra: &str| {
        let body = "LHTTP/1.0 chat\r\npublish:room\r\n\r\nhello";
        format!(
            "POST /publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n{extra}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let own = format!("127.0.0.1:{port}");
    let answer = http_raw(
        &server,
        &post(own.clone(), "Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = http_raw(
        &server,
        &post(own.clone(), "Sec-Fetch-Site: cross-site\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let rebound = format!("evil.example:{port}");
    let origin = format!("Origin: http://{rebound}\r\n");
    let answer = http_raw(&server, &post(rebound.clone(), &origin)).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = http_raw(&server, &post(rebound.clone(), "")).await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    subscriber.expect_silence(100).await;

    // curl, a back end, the server's own page.
    let answer = http_raw(&server, &post(own.clone(), "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let same = format!("Origin: http://{own}\r\nSec-Fetch-Site: same-origin\r\n");
    let answer = http_raw(&server, &post(own.clone(), &same)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(body(&subscriber.recv().await), "hello");
    assert_eq!(body(&subscriber.recv().await), "hello");

    for path in ["/metrics", "/healthz"] {
        let get = |host: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        };
        let answer = http_raw(&server, &get(&rebound)).await;
        assert!(answer.starts_with("HTTP/1.1 421"), "{path}: {answer}");
        for host in [own.as_str(), "localhost", "[::1]:1"] {
            let answer = http_raw(&server, &get(host)).await;
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "{path} for {host}: {answer}"
            );
        }
    }
}

/// Limits of absurd size are refused when they size something, and work as "never" when they
/// are durations: nothing panics.
#[tokio::test]
async fn absurd_edge_limits_are_errors_or_never_not_panics() {
    let too_many = config(|c: &mut Config| {
        c.limits.max_http_connections = lhttp_server::config::MAX_COUNT + 1;
    });
    assert!(Server::builder(too_many).build().is_err());
    let too_small = config(|c: &mut Config| c.limits.unfinished_message_bytes = 1000);
    assert!(Server::builder(too_small).build().is_err());

    let server = auth_server(|c| {
        c.limits.message_timeout_ms = u64::MAX;
        c.limits.auth_failure_window_ms = u64::MAX;
        c.limits.auth_failures_per_ip = 1;
        c.limits.auth_failures_per_connection = 0;
    })
    .await;
    let mut client = server.client().await;
    assert_eq!(auth(&mut client, &forged("mallory")).await.0, 401);
    assert_eq!(auth(&mut client, &forged("mallory")).await.0, 429);
    let mut stalled = raw_websocket(&server, [127, 0, 0, 2]).await;
    stalled
        .write_all(&frame_header(true, 0x1, 1000))
        .await
        .unwrap();
    client.expect_silence(200).await;
    let mut fresh = upgrade_from(&server, [127, 0, 0, 3], None).await.unwrap();
    fresh.subscribe("fine").await;
}
