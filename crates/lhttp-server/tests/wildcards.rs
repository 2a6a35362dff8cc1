//! Wildcard subscriptions over real WebSocket connections: `*` matches one token and `>` the
//! rest, subscribers see the concrete channel, rules cannot be widened by a pattern, and
//! patterns are bounded per connection and over the server.

mod common;

use common::{body, config, start_with};
use lhttp_server::{ChannelOptions, ChannelRule, Server, proto::Message};

fn chat(channel: &str, text: &str) -> Message {
    Message::builder("chat")
        .header("publish", channel.to_owned())
        .body(text.to_owned())
        .build()
        .unwrap()
}

#[tokio::test]
async fn patterns_match_one_token_or_the_rest_and_subscribers_see_the_concrete_channel() {
    let server = start_with(Server::builder(config(|_| {}))).await;
    let mut temps = server.client().await;
    temps.subscribe("sensor.*.temp").await;
    let mut everything_chat = server.client().await;
    everything_chat.subscribe("chat.>").await;
    for (channel, text) in [
        ("sensor.1.temp", "21"),
        ("sensor.1.hum", "40"),
        ("sensor.1.temp.raw", "x"),
        ("sensor.2.temp", "19"),
        ("chat", "not under chat."),
        ("chat.lobby", "hi"),
        ("chat.team.dev", "deep"),
    ] {
        server.handle.publish(&chat(channel, text)).unwrap();
    }
    for (channel, text) in [("sensor.1.temp", "21"), ("sensor.2.temp", "19")] {
        let m = temps.recv().await;
        assert_eq!(
            (m.header("publish"), body(&m).as_str()),
            (Some(channel), text)
        );
    }
    temps.expect_silence(100).await;
    for (channel, text) in [("chat.lobby", "hi"), ("chat.team.dev", "deep")] {
        let m = everything_chat.recv().await;
        assert_eq!(
            (m.header("publish"), body(&m).as_str()),
            (Some(channel), text)
        );
    }
    everything_chat.expect_silence(100).await;

    // Unsubscribing the pattern ends it; a connection that goes away leaves none behind.
    let (answer, _) = temps
        .request("LHTTP/1.0 chat\r\nunsubscribe:sensor.*.temp\r\n\r\n")
        .await;
    assert_eq!(answer.command(), "ok");
    server
        .handle
        .publish(&chat("sensor.3.temp", "gone"))
        .unwrap();
    temps.expect_silence(100).await;
    assert_eq!(server.handle.hub().pattern_count(), 1);
    everything_chat.close().await;
    server.wait_hub_empty().await;
    assert_eq!(server.handle.hub().pattern_count(), 0);
}

#[tokio::test]
async fn history_channels_reach_pattern_subscribers_with_their_offsets() {
    let server = start_with(Server::builder(config(|c| {
        c.history.store = "memory".into();
        c.channels.push(ChannelOptions {
            pattern: "room.*".into(),
            history_size: 10,
            ..ChannelOptions::default()
        });
    })))
    .await;
    let mut all_rooms = server.client().await;
    all_rooms.subscribe("room.*").await;
    server.handle.publish(&chat("room.a", "one")).unwrap();
    server.handle.publish(&chat("room.a", "two")).unwrap();
    for offset in ["1", "2"] {
        assert_eq!(all_rooms.recv().await.header("offset"), Some(offset));
    }
}

#[tokio::test]
async fn a_pattern_is_allowed_only_when_the_rules_allow_every_channel_it_could_match() {
    let server = start_with(Server::builder(config(|c| {
        c.auth.rules.push(ChannelRule {
            channels: "public.*".into(),
            subscribe: true,
            anonymous: true,
            ..ChannelRule::default()
        });
    })))
    .await;
    let mut guest = server.client().await;
    guest.subscribe("public.*").await;
    for (wider, status) in [
        ("public.>", "403"),
        ("public.*.x", "403"),
        (">", "400"),
        ("*.lobby", "400"),
    ] {
        let (answer, _) = guest
            .request(&format!("LHTTP/1.0 chat\r\nsubscribe:{wider}\r\n\r\n"))
            .await;
        assert_eq!(answer.command(), "error", "{wider} was allowed");
        assert_eq!(answer.header("status"), Some(status), "{wider}: {answer:?}");
    }
    server.handle.publish(&chat("private.x", "secret")).unwrap();
    server.handle.publish(&chat("public.x", "open")).unwrap();
    assert_eq!(body(&guest.recv().await), "open");
}

#[tokio::test]
async fn patterns_are_bounded_per_connection_and_over_the_server() {
    let server = start_with(Server::builder(config(|c| {
        c.limits.max_patterns_per_connection = 2;
        c.limits.max_patterns = 3;
    })))
    .await;
    let mut a = server.client().await;
    a.subscribe("a.* b.*").await;
    let (answer, _) = a.request("LHTTP/1.0 chat\r\nsubscribe:c.*\r\n\r\n").await;
    assert_eq!(answer.header("status"), Some("429"), "{answer:?}");
    let mut b = server.client().await;
    // The same patterns again are not new ones.
    b.subscribe("a.* b.*").await;
    let mut c = server.client().await;
    c.subscribe("c.*").await;
    let (answer, _) = c.request("LHTTP/1.0 chat\r\nsubscribe:d.*\r\n\r\n").await;
    assert_eq!(answer.header("status"), Some("503"), "{answer:?}");
    assert_eq!(server.handle.hub().pattern_count(), 3);
}

#[tokio::test]
async fn patterns_are_refused_where_they_cannot_apply() {
    let server = start_with(Server::builder(config(|_| {}))).await;
    let mut client = server.client().await;
    for bad in [
        "LHTTP/1.0 chat\r\nsubscribe:a.>.b\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:a*\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:>\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:*.temp\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:room.*\r\nrecent:5\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:jobs.*\r\nqueue:workers\r\n\r\n",
        "LHTTP/1.0 chat\r\npublish:room.*\r\n\r\nno wildcard publishes",
    ] {
        client.send(bad).await;
        let (status, reason, _) = client.recv_error().await;
        assert_eq!(status, 400, "{bad:?}: {reason}");
    }
    assert_eq!(server.handle.hub().pattern_count(), 0);
}
