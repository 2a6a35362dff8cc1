//! The exact bytes existing clients of the original lhttp send (LHTTP-ORIGINAL.md) work.

mod common;

use common::*;
use tokio_tungstenite::tungstenite;

/// The original JavaScript SDK's chat demo: subscribe on open, publish on send, and the page
/// shows every message with a non-empty body. Its decoder takes the body as the text between
/// the first and second blank line, so what it receives must be `key:value` lines with no
/// space after the colon and no blank line before the body ends.
#[tokio::test]
async fn original_javascript_sdk_chat() {
    let server = start().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    for client in [&mut alice, &mut bob] {
        client
            .send("LHTTP/1.0 chat\r\nsubscribe:chatroom\r\n\r\n")
            .await;
    }
    // The original SDK sends no request-id; wait for the server to have both subscriptions.
    wait_subscribers(&server, "chatroom", 2).await;

    alice
        .send("LHTTP/1.0 chat\r\npublish:chatroom\r\n\r\nhi bob")
        .await;
    for client in [&mut alice, &mut bob] {
        let frame = client.recv_frame().await;
        let tungstenite::Message::Text(text) = frame else {
            panic!("the original SDK needs text frames, got {frame:?}");
        };
        assert_eq!(
            text.as_str(),
            "LHTTP/1.0 chat\r\npublish:chatroom\r\n\r\nhi bob"
        );
    }
    // Nothing else (no acknowledgement) reaches a client that did not ask for one.
    bob.expect_silence(200).await;
}

/// The original Go command-line client connects to /echo and sends subpub messages.
#[tokio::test]
async fn original_go_client_subpub_on_echo_path() {
    let server = start().await;
    let mut client = Client::connect(&server.url("/echo")).await;
    client
        .send("LHTTP/1.0 subpub\r\nsubscribe:camera_123\r\n\r\n")
        .await;
    wait_subscribers(&server, "camera_123", 1).await;
    client
        .send("LHTTP/1.0 subpub\r\npublish:camera_123\r\n\r\nhello world")
        .await;
    let m = client.recv().await;
    assert_eq!(m.command(), "subpub");
    assert_eq!(m.header("publish"), Some("camera_123"));
    assert_eq!(body(&m), "hello world");

    client
        .send("LHTTP/1.0 subpub\r\nunsubscribe:camera_123\r\n\r\n")
        .await;
    server.wait_hub_empty().await;
    client
        .send("LHTTP/1.0 subpub\r\npublish:camera_123\r\n\r\nagain")
        .await;
    client.expect_silence(200).await;
}

/// The Go client's multipart example is accepted and published intact.
#[tokio::test]
async fn original_go_client_multipart_example() {
    let server = start().await;
    let mut client = Client::connect(&server.url("/echo")).await;
    client.subscribe("camera_123").await;
    let multipart = "LHTTP/1.0 subpub\r\nmultipart:0 14\r\npublish:camera_123\r\n\r\n\
                     k1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2";
    client.send(multipart).await;
    let m = client.recv().await;
    let parts = m.parts().unwrap().expect("multipart header kept");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].headers.get("k1"), Some("v1"));
    assert_eq!(&parts[0].body[..], b"body1");
    assert_eq!(parts[1].headers.get("k2"), Some("v2"));
    assert_eq!(&parts[1].body[..], b"body2");
}

/// `POST /publish` as the original README shows it, from any language.
#[tokio::test]
async fn original_http_publish() {
    let server = start().await;
    let mut mike = server.client().await;
    mike.subscribe("mike").await;
    let (status, reply) = server
        .post(
            "/publish",
            "LHTTP/1.0 chat\r\npublish:mike\r\n\r\nhello mike",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply, r#"{"channels":1,"deliveries":1}"#);
    let m = mike.recv().await;
    assert_eq!(m.command(), "chat");
    assert_eq!(body(&m), "hello mike");
}

/// The original clients connect on `/`, `/echo` and `/chat`; any path upgrades.
#[tokio::test]
async fn websocket_on_any_path() {
    let server = start().await;
    for path in ["/", "/echo", "/chat", "/some/other/path?x=1"] {
        let mut client = Client::connect(&server.url(path)).await;
        let (answer, _) = client
            .request("LHTTP/1.0 chat\r\nsubscribe:a\r\n\r\n")
            .await;
        assert_eq!(answer.command(), "ok", "on {path}");
    }
}

/// Messages that end after the headers, or after the start line, or without any line end, are
/// valid; so are bare LF line endings.
#[tokio::test]
async fn short_forms_and_bare_lf() {
    let server = start().await;
    let mut client = server.client().await;
    client.send("LHTTP/1.0 c\r\nsubscribe:a\r\n").await;
    wait_subscribers(&server, "a", 1).await;
    client.send("LHTTP/1.0 c\npublish:a\n\nbare lf").await;
    let m = client.recv().await;
    assert_eq!(body(&m), "bare lf");
    client.send("LHTTP/1.0 c\r\npublish:a").await;
    let m = client.recv().await;
    assert_eq!(m.header("publish"), Some("a"));
    assert!(m.body().is_empty());
}

/// Binary frames carry lhttp messages like text frames; a body that is not UTF-8 is delivered
/// in a binary frame, byte for byte.
#[tokio::test]
async fn binary_frames_and_binary_bodies() {
    let server = start().await;
    let mut client = server.client().await;
    client.subscribe("bin").await;
    let mut message = b"LHTTP/1.0 blob\r\npublish:bin\r\n\r\n".to_vec();
    message.extend_from_slice(&[0xff, 0x00, 0xfe, b'\r', b'\n', b'\r', b'\n', 0x80]);
    client.send_binary(&message).await;
    let frame = client.recv_frame().await;
    let tungstenite::Message::Binary(data) = frame else {
        panic!("a non-UTF-8 message must arrive in a binary frame, got {frame:?}");
    };
    assert_eq!(&data[..], &message[..]);

    client
        .send_binary(b"LHTTP/1.0 c\r\npublish:bin\r\n\r\ntext body")
        .await;
    let frame = client.recv_frame().await;
    assert!(matches!(frame, tungstenite::Message::Text(_)), "{frame:?}");
}
