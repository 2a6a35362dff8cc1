//! Every message the server cannot accept is answered (command `error`, `status`, `reason`,
//! `request-id` copied) and the connection stays usable; only WebSocket violations close it,
//! with the proper code. One test per defect of the original (LHTTP-ORIGINAL.md, items 1–3
//! and 13) where it concerns parsing and limits.

mod common;

use common::*;
use futures_util::SinkExt;
use lhttp_server::{Config, Server};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::{
    self,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

/// Sends `raw`, expects an error with `status`, then proves the connection still works.
async fn assert_rejected(client: &mut Client, raw: &[u8], status: u16) -> String {
    client.send_binary(raw).await;
    let (got, reason, _) = client.recv_error().await;
    assert_eq!(
        got,
        status,
        "for {:?}: {reason}",
        String::from_utf8_lossy(raw)
    );
    let (answer, _) = client
        .request("LHTTP/1.0 probe\r\nsubscribe:alive\r\n\r\n")
        .await;
    assert_eq!(answer.command(), "ok", "connection unusable after {raw:?}");
    reason
}

/// Defects 1 and 2: inputs that crashed the connection or were met with silence.
#[tokio::test]
async fn malformed_messages_get_400_and_the_connection_survives() {
    let server = start().await;
    let mut c = server.client().await;
    let cases: &[&[u8]] = &[
        b"",
        b"x",
        b"LHTTP/1.0",
        b"LHTTP/1.0\r\n",
        b"LHTTP/1.0 \r\n",
        b"LHTTP/1.0Xchat\r\n\r\n",
        b"LHTTP/1.0  chat\r\n\r\n",
        b"LHTTP/2.0 chat\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"lhttp/1.0 chat\r\n\r\n",
        b"LHTTP/1.0 chat\r\nno colon here\r\n\r\n",
        b"LHTTP/1.0 chat\r\n:empty-name\r\n\r\n",
        b"LHTTP/1.0 chat\r\nbad\x01value:x\r\n\r\n",
        b"LHTTP/1.0 ch\x00t\r\n\r\n",
        b"LHTTP/1.0 chat\r\nk:\xff\xfe\r\n\r\n",
    ];
    for raw in cases {
        assert_rejected(&mut c, raw, 400).await;
    }
    assert_eq!(server.handle.connection_count(), 1);
}

/// Defect 2: unknown commands were silently ignored.
#[tokio::test]
async fn unknown_command_gets_404_with_request_id() {
    let server = start().await;
    let mut c = server.client().await;
    let (answer, _) = c.request("LHTTP/1.0 nosuchthing\r\nk:v\r\n\r\nbody").await;
    assert_eq!(answer.command(), "error");
    assert_eq!(answer.header("status"), Some("404"));
    assert!(answer.header("reason").unwrap().contains("unknown command"));
    // request() matched the request-id, which proves it was copied.
    assert!(answer.header("request-id").is_some());
}

#[tokio::test]
async fn error_replies_carry_the_request_id() {
    let server = start().await;
    let mut c = server.client().await;
    c.send("LHTTP/1.0 s\r\nrequest-id:abc-123\r\nsubscribe:*\r\n\r\n")
        .await;
    let (status, _, m) = c.recv_error().await;
    assert_eq!(status, 400);
    assert_eq!(m.header("request-id"), Some("abc-123"));
    // Header order of server-made messages is fixed.
    let names: Vec<&str> = m.headers().iter().map(|h| h.name()).collect();
    assert_eq!(names, ["status", "reason", "request-id"]);
}

/// Defect 3: header parsing quirks of the original.
#[tokio::test]
async fn headers_are_trimmed_case_insensitive_and_empty_values_are_fine() {
    let server = start().await;
    let mut c = server.client().await;
    // `Subscribe: ch ` means channel "ch"; an empty value does not end the headers.
    c.send("LHTTP/1.0 s\r\nempty:\r\nSubscribe: ch \t\r\nRequest-ID:  r1 \r\n\r\n")
        .await;
    let answer = c.recv().await;
    assert_eq!(answer.command(), "ok");
    assert_eq!(answer.header("request-id"), Some("r1"));
    assert_eq!(server.handle.hub().subscriber_count("ch"), 1);
    // A message with no headers has none: its body is not read as headers.
    c.send("LHTTP/1.0 s\r\n\r\npublish:ch\r\n\r\nnot a header")
        .await;
    let (status, _, _) = c.recv_error().await;
    assert_eq!(status, 404, "body lines must not act as headers");
    c.expect_silence(100).await;
}

/// Too many headers: 400, connection usable.
#[tokio::test]
async fn too_many_headers() {
    let server = start().await;
    let mut c = server.client().await;
    let headers: String = (0..65).map(|i| format!("h{i}:v\r\n")).collect();
    let raw = format!("LHTTP/1.0 s\r\n{headers}\r\n");
    let reason = assert_rejected(&mut c, raw.as_bytes(), 400).await;
    assert!(reason.contains("64"), "{reason}");
    // 62 headers, subscribe and request-id: exactly the limit.
    let headers: String = (0..62).map(|i| format!("h{i}:v\r\n")).collect();
    let (answer, _) = c
        .request(&format!("LHTTP/1.0 s\r\n{headers}subscribe:x\r\n\r\n"))
        .await;
    assert_eq!(answer.command(), "ok");
    // Even a message too malformed to parse gets its request-id back when it can be found.
    let headers: String = (0..70).map(|i| format!("h{i}:v\r\n")).collect();
    let (answer, _) = c.request(&format!("LHTTP/1.0 s\r\n{headers}\r\n")).await;
    assert_eq!(answer.header("status"), Some("400"));
}

/// Defect 2: frames over 40960 bytes were dropped silently. Ours accepts up to the limit
/// (64 KiB by default) and closes with 1009 beyond it (defect 13: size was unlimited).
#[tokio::test]
async fn message_size_limit() {
    let server = start().await;
    let mut sub = server.client().await;
    sub.subscribe("big").await;
    let head = "LHTTP/1.0 big\r\npublish:big\r\n\r\n";
    let body = "b".repeat(64 * 1024 - head.len());
    let mut publisher = server.client().await;
    publisher.send(&format!("{head}{body}")).await;
    let m = sub.recv().await;
    assert_eq!(m.body().len(), body.len());

    publisher.send(&format!("{head}{body}x")).await;
    let (code, reason) = publisher.recv_close().await;
    assert_eq!(code, 1009, "{reason}");
    // Others are unaffected.
    sub.subscribe("still").await;
}

/// Defect 13: fragmented WebSocket messages were handled fragment by fragment. Ours reassembles
/// them, and limits the reassembled size.
#[tokio::test]
async fn fragmented_messages_are_reassembled() {
    let server = start().await;
    let mut c = server.client().await;
    c.subscribe("frag").await;
    let message = b"LHTTP/1.0 f\r\npublish:frag\r\n\r\none-two-three";
    let pieces = [&message[..7], &message[7..20], &message[20..]];
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(piece.to_vec(), opcode, i == pieces.len() - 1);
        c.ws.send(tungstenite::Message::Frame(frame)).await.unwrap();
    }
    let m = c.recv().await;
    assert_eq!(body(&m), "one-two-three");

    // Fragments that add up to more than the limit close with 1009.
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.max_message_size = 1000
    })))
    .await;
    let mut c = server.client().await;
    for i in 0..3 {
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(vec![b'a'; 400], opcode, i == 2);
        let _ = c.ws.send(tungstenite::Message::Frame(frame)).await;
    }
    let (code, _) = c.recv_close().await;
    assert_eq!(code, 1009);
}

/// Invalid UTF-8 in a text frame violates WebSocket: close 1007.
#[tokio::test]
async fn invalid_utf8_text_frame_closes_with_1007() {
    let server = start().await;
    let mut c = server.client().await;
    let frame = Frame::message(
        b"LHTTP/1.0 c\r\n\r\n\xff\xfe".to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    c.ws.send(tungstenite::Message::Frame(frame)).await.unwrap();
    let (code, _) = c.recv_close().await;
    assert_eq!(code, 1007);
    server.wait_connections(0).await;
}

/// The `upstream` header is refused until the operator allows back ends: the server never calls
/// a URL a client chose (defect 8, server-side request forgery).
#[tokio::test]
async fn upstream_is_forbidden_by_default() {
    let server = start().await;
    let mut c = server.client().await;
    c.subscribe("room").await;
    let (answer, _) = c
        .request(
            "LHTTP/1.0 chat\r\nupstream:POST http://127.0.0.1:1/steal\r\npublish:room\r\n\r\nx",
        )
        .await;
    assert_eq!(answer.header("status"), Some("403"));
    // A refused message does nothing else: it was not published.
    c.expect_silence(200).await;
}

/// Defect 1: multipart offsets out of range crashed the connection.
#[tokio::test]
async fn bad_multipart_gets_400() {
    let server = start().await;
    let mut c = server.client().await;
    for header in ["0 999", "5 2", "0 x", "", "0 3"] {
        let raw =
            format!("LHTTP/1.0 up\r\nmultipart:{header}\r\npublish:p\r\n\r\nk1:v1\r\n\r\nbody1");
        assert_rejected(&mut c, raw.as_bytes(), 400).await;
    }
}

/// Connections beyond the limit are refused at the upgrade with 503; the others keep working.
#[tokio::test]
async fn connection_limit() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.max_connections = 2
    })))
    .await;
    let mut a = server.client().await;
    let _b = server.client().await;
    match tokio_tungstenite::connect_async(server.url("/")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("third connection must be refused, got {other:?}"),
    }
    a.subscribe("fine").await;
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains("lhttp_connections_refused_total 1"),
        "{metrics}"
    );
}

/// A client that sends garbage bytes instead of a WebSocket handshake does not disturb others.
#[tokio::test]
async fn garbage_before_handshake() {
    let server = start().await;
    let mut c = server.client().await;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .await
        .unwrap();
    drop(raw);
    c.subscribe("ok").await;
}

/// The classes of input not covered above, each answered with an `error` (never silence, never
/// a dropped connection): binary garbage, empty frames, a head without its blank line, huge
/// start lines and header lines, control bytes. Afterwards the connection and the server keep
/// working for everyone.
#[tokio::test]
async fn every_other_class_of_malformed_input_is_answered() {
    let server = start().await;
    let mut c = server.client().await;
    // Deterministic pseudo-random bytes (xorshift): garbage of several lengths.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut garbage = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let long_command = format!("LHTTP/1.0 {}\r\n\r\n", "c".repeat(60_000));
    let long_name = format!("LHTTP/1.0 chat\r\n{}:v\r\n\r\n", "n".repeat(60_000));
    let many_empty_lines = format!("LHTTP/1.0 chat\r\n{}", "\r\n".repeat(30_000));
    let cases: Vec<(Vec<u8>, &[u16])> = vec![
        (garbage(1), &[400]),
        (garbage(17), &[400]),
        (garbage(4096), &[400]),
        (garbage(60_000), &[400]),
        (b"LHTTP/1.0 chat\r\nk:v".to_vec(), &[404]),
        (b"LHTTP/1.0 chat\r\nk:v\r\n".to_vec(), &[404]),
        (b"\r\n\r\n".to_vec(), &[400]),
        (b"LHTTP/1.0 chat\rk:v\r\r".to_vec(), &[400, 404]),
        (b"\0\0\0\0".to_vec(), &[400]),
        (b"LHTTP/1.0 chat\r\nk\0:v\r\n\r\n".to_vec(), &[400]),
        (long_command.into_bytes(), &[400]),
        (long_name.into_bytes(), &[400]),
        (many_empty_lines.into_bytes(), &[404]),
        (b"LHTTP/1.0 chat\r\npublish:\r\n\r\n".to_vec(), &[400, 404]),
        (
            b"LHTTP/1.0 chat\r\nsubscribe:a \x7f b\r\n\r\n".to_vec(),
            &[400],
        ),
    ];
    let mut errors = 0;
    for (raw, allowed) in &cases {
        c.send_binary(raw).await;
        let m = c.recv().await;
        let status: u16 = m.header("status").and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(
            allowed.contains(&status),
            "{:?}: got {m:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(40)])
        );
        if m.command() == "error" {
            errors += 1;
        }
        let (answer, _) = c
            .request("LHTTP/1.0 probe\r\nsubscribe:alive\r\n\r\n")
            .await;
        assert_eq!(answer.command(), "ok", "connection unusable");
    }
    // Empty frames, text and binary: a malformed (empty) message each.
    c.send("").await;
    assert_eq!(c.recv_error().await.0, 400);
    c.send_binary(b"").await;
    assert_eq!(c.recv_error().await.0, 400);
    errors += 2;
    // The server serves others as before, and counted every error it sent.
    let mut other = server.client().await;
    other.publish("chat", "alive", "still here").await;
    assert_eq!(body(&c.recv().await), "still here");
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains(&format!("lhttp_error_replies_total {errors}\n")),
        "{errors} errors: {metrics}"
    );
    assert_eq!(server.handle.connection_count(), 2);
}
