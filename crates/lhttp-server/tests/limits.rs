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

/// A client that keeps sending whatever the 429 answers say is closed with 1008; the other
/// clients do not notice.
#[tokio::test]
async fn persistent_flooding_closes_the_connection_with_1008() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 1;
        c.limits.rate_limit_close_after = 20;
        c.limits.rate_limit_window_ms = 60_000;
    })))
    .await;
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
