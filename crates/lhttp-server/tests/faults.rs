//! Fault tests on real loopback sockets: thousands of clients that vanish at every stage of a
//! connection leave nothing behind, and a client flooding the server does not stop the
//! others' deliveries. Bounded in count and time; no timed assertions.

mod common;

use std::time::Duration;

use common::{storm::storm, *};
use futures_util::{SinkExt, StreamExt};
use lhttp_server::{Config, Server};
use tokio_tungstenite::tungstenite;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// 5,000 connections dropped abruptly (after connecting, mid-handshake, after subscribing, in
/// the middle of a frame; half of them with a TCP reset): afterwards the hub is empty, no
/// connection is counted (in total or per address), and a fresh client is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_abrupt_disconnects_leave_nothing_behind() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        // Default per-IP limit (1000) stays on: its counts must not leak either.
        c.limits.handshake_timeout_ms = 2_000;
    })))
    .await;
    let mut watcher = server.client().await;
    watcher.subscribe("storm-all").await;

    let failures = storm(server.addr, 5_000, 200).await;
    assert_eq!(failures, 0, "the server stopped answering during the storm");

    // Bounded poll: every session notices its peer is gone and cleans up.
    let deadline = tokio::time::Instant::now() + WAIT * 6;
    loop {
        let hub = server.handle.hub();
        let settled = server.handle.connection_count() == 1
            && hub.channel_count() == 1
            && hub.subscription_count() == 1;
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {} connections, {} channels, {} subscriptions",
            server.handle.connection_count(),
            hub.channel_count(),
            hub.subscription_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loopback = "127.0.0.1".parse().unwrap();
    assert_eq!(server.handle.connections_from(loopback), 1);
    assert_eq!(server.handle.connected_addresses(), 1);
    // No half message was published: the watcher saw nothing.
    watcher.expect_silence(200).await;

    // A fresh client is served, and the watcher still gets what is published.
    let mut fresh = server.client().await;
    fresh.publish("chat", "storm-all", "after the storm").await;
    assert_eq!(body(&watcher.recv().await), "after the storm");
    let metrics = server.get("/metrics").await.1;
    // 3 of every 5 storm clients completed the handshake, plus the watcher and the fresh one.
    assert_eq!(metric(&metrics, "lhttp_connections_opened_total"), 3_002);
    assert_eq!(metric(&metrics, "lhttp_connections_closed_total"), 3_000);
    assert_eq!(metric(&metrics, "lhttp_connections"), 2);
    fresh.close().await;
    watcher.close().await;
    server.wait_connections(0).await;
    server.wait_hub_empty().await;
    assert_eq!(server.handle.connected_addresses(), 0);
}

/// A connection that publishes as fast as it can, to a channel with a subscriber, while a
/// calm publisher sends to another: every calm message arrives, in order, with the rate limit
/// off (the flood is served at full speed) and on (the flood is refused with 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_stop_other_deliveries() {
    for rate in [0, 1000] {
        let server = start_with(Server::builder(config(|c: &mut Config| {
            c.limits.messages_per_second = rate;
            c.limits.message_burst = rate.max(1);
            c.limits.rate_limit_close_after = 0;
        })))
        .await;
        let mut flood_sub = server.client().await;
        flood_sub.subscribe("flood").await;
        let mut calm_sub = server.client().await;
        calm_sub.subscribe("calm").await;

        let flooder = server.client().await;
        let (mut sink, mut stream) = flooder.ws.split();
        let stop = tokio_util::sync::CancellationToken::new();
        let flooding = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let frame = tungstenite::Message::text(format!(
                    "LHTTP/1.0 chat\r\npublish:flood\r\n\r\n{}",
                    "f".repeat(64)
                ));
                let mut sent = 0u64;
                while !stop.is_cancelled() {
                    // Feed many frames per flush: as fast as one connection can go.
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
            })
        };
        // The flooder reads its 429 answers, as a client should.
        let draining = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        // Subscribers of the flood drain it, or they would be cut off as slow consumers.
        let flood_reader = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(2), flood_sub.ws.next()).await
            {
                n += 1;
            }
            n
        });

        let mut calm_pub = server.client().await;
        for i in 0..200 {
            calm_pub.publish("calm", "calm", &format!("calm {i}")).await;
        }
        for i in 0..200 {
            assert_eq!(
                body(&calm_sub.recv().await),
                format!("calm {i}"),
                "rate {rate}"
            );
        }
        stop.cancel();
        let sent = flooding.await.unwrap();
        let flood_delivered = flood_reader.await.unwrap();
        draining.abort();
        assert!(sent > 200, "the flooder did flood ({sent} sent)");
        if rate == 0 {
            assert!(flood_delivered > 0);
        }
        let metrics = server.get("/metrics").await.1;
        let limited = metric(&metrics, "lhttp_rate_limited_messages_total");
        if rate > 0 {
            assert!(limited > 0, "the flood was over the rate");
        } else {
            assert_eq!(limited, 0);
        }
    }
}
