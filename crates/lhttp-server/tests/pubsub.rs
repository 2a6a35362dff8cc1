//! Channels: subscribe, unsubscribe, publish, fan-out, clean-up, and the delivery rules of the
//! brief.

mod common;

use common::*;
use lhttp_server::{Config, Server};

#[tokio::test]
async fn several_channels_in_one_header() {
    let server = start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut publisher = server.client().await;
    a.subscribe("x y").await;
    b.subscribe("y z").await;
    // One message to three channels: a gets it via x and y, b via y and z, each copy naming
    // the one channel it came through.
    publisher.publish("news", "x y z", "hello").await;
    let mut got_a: Vec<String> = [a.recv().await, a.recv().await]
        .iter()
        .map(|m| m.header("publish").unwrap().to_owned())
        .collect();
    got_a.sort();
    assert_eq!(got_a, ["x", "y"]);
    let mut got_b: Vec<String> = [b.recv().await, b.recv().await]
        .iter()
        .map(|m| m.header("publish").unwrap().to_owned())
        .collect();
    got_b.sort();
    assert_eq!(got_b, ["y", "z"]);
    a.expect_silence(100).await;
    b.expect_silence(100).await;
}

#[tokio::test]
async fn subscriber_gets_publisher_command_headers_and_body_without_routing_headers() {
    let server = start().await;
    let mut sub = server.client().await;
    sub.subscribe("room").await;
    let mut publisher = server.client().await;
    publisher
        .send(
            "LHTTP/1.0 chat\r\nnick:ann\r\nsubscribe:own\r\npublish:room other\r\n\
             x-trace:1 2 3\r\nunsubscribe:zzz\r\n\r\nbody\r\n\r\nwith blank line",
        )
        .await;
    let m = sub.recv().await;
    assert_eq!(
        &m.to_bytes()[..],
        b"LHTTP/1.0 chat\r\nnick:ann\r\npublish:room\r\nx-trace:1 2 3\r\n\r\nbody\r\n\r\nwith blank line"
    );
}

/// Defect 5: subscribing twice delivered every message twice and one unsubscribe could not stop
/// it; subscriptions were never removed at disconnect.
#[tokio::test]
async fn subscribe_is_idempotent_and_one_unsubscribe_stops_delivery() {
    let server = start().await;
    let mut c = server.client().await;
    c.subscribe("dup").await;
    c.subscribe("dup").await;
    c.subscribe("dup dup").await;
    assert_eq!(server.handle.hub().subscriber_count("dup"), 1);
    let others = c.publish("m", "dup", "once").await;
    let mut received = others;
    received.extend(collect_for(&mut c, 200).await);
    assert_eq!(received.len(), 1, "{received:?}");

    let (answer, _) = c.request("LHTTP/1.0 m\r\nunsubscribe:dup\r\n\r\n").await;
    assert_eq!(answer.command(), "ok");
    c.publish("m", "dup", "never").await;
    c.expect_silence(200).await;
    server.wait_hub_empty().await;
}

/// Defect 1: unsubscribing a channel never subscribed crashed the connection.
#[tokio::test]
async fn unsubscribe_unknown_channel_is_a_no_op() {
    let server = start().await;
    let mut c = server.client().await;
    let (answer, _) = c
        .request("LHTTP/1.0 m\r\nunsubscribe:never-subscribed\r\n\r\n")
        .await;
    assert_eq!(answer.command(), "ok");
    c.subscribe("still-works").await;
}

#[tokio::test]
async fn disconnect_removes_every_subscription() {
    let server = start().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = server.client().await;
        c.subscribe(&format!("shared own-{i} other-{}", i % 3))
            .await;
        clients.push(c);
    }
    assert_eq!(server.handle.hub().subscriber_count("shared"), 20);
    assert_eq!(server.handle.hub().subscription_count(), 60);
    // Half close politely, half just drop the TCP connection.
    for (i, c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.close().await;
        } else {
            drop(c);
        }
    }
    server.wait_hub_empty().await;
    server.wait_connections(0).await;
}

/// Subscribe runs before publish within one message: the sender receives its own message.
#[tokio::test]
async fn subscribe_and_publish_in_one_message_reaches_the_sender() {
    let server = start().await;
    let mut c = server.client().await;
    c.send("LHTTP/1.0 chat\r\nsubscribe:me\r\npublish:me\r\n\r\nself")
        .await;
    let m = c.recv().await;
    assert_eq!(body(&m), "self");
    assert_eq!(m.header("subscribe"), None);
}

/// Every subscriber receives one publisher's messages in publish order, and every subscriber of
/// a channel gets the same bytes.
#[tokio::test]
async fn order_per_publisher_and_identical_bytes() {
    let server = start().await;
    let mut subs = Vec::new();
    for _ in 0..5 {
        let mut s = server.client().await;
        s.subscribe("ordered").await;
        subs.push(s);
    }
    let mut publisher = server.client().await;
    for i in 0..500 {
        publisher
            .send(&format!(
                "LHTTP/1.0 seq\r\npublish:ordered\r\nn:{i}\r\n\r\n{i}"
            ))
            .await;
    }
    let mut first: Vec<Vec<u8>> = Vec::new();
    for (k, s) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        for i in 0..500 {
            let m = s.recv().await;
            assert_eq!(body(&m), i.to_string(), "subscriber {k}");
            got.push(m.to_bytes().to_vec());
        }
        if k == 0 {
            first = got;
        } else {
            assert_eq!(got, first);
        }
    }
}

/// Defect 4: the header order of server-generated messages was random.
#[tokio::test]
async fn header_order_is_preserved_on_every_delivery() {
    let server = start().await;
    let mut s = server.client().await;
    s.subscribe("h").await;
    let names: Vec<String> = (0..12).map(|i| format!("h{}", (i * 7) % 12)).collect();
    let headers: String = names.iter().map(|n| format!("{n}:v\r\n")).collect();
    let mut publisher = server.client().await;
    for _ in 0..20 {
        publisher
            .send(&format!("LHTTP/1.0 c\r\n{headers}publish:h\r\n\r\n"))
            .await;
        let m = s.recv().await;
        let got: Vec<&str> = m.headers().iter().map(|h| h.name()).collect();
        let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
        expected.push("publish");
        assert_eq!(got, expected);
    }
}

/// Channel names: no wildcard can mean "everything"; invalid names are refused whole.
#[tokio::test]
async fn channel_names_are_validated() {
    let server = start().await;
    let mut spy = server.client().await;
    for bad in [">", "*", "news.>.x", "a*b", &"x".repeat(257)] {
        let (answer, _) = spy
            .request(&format!("LHTTP/1.0 s\r\nsubscribe:{bad}\r\n\r\n"))
            .await;
        assert_eq!(answer.command(), "error", "{bad}");
        assert_eq!(answer.header("status"), Some("400"));
    }
    // One bad name refuses the whole list: nothing is subscribed.
    let (answer, _) = spy.request("LHTTP/1.0 s\r\nsubscribe:good >\r\n\r\n").await;
    assert_eq!(answer.header("status"), Some("400"));
    assert_eq!(server.handle.hub().subscription_count(), 0);
    // The longest allowed name works.
    spy.subscribe(&"y".repeat(256)).await;
    // Traffic on other channels never reaches the refused spy.
    let mut other = server.client().await;
    other.publish("c", "secret", "private").await;
    spy.expect_silence(200).await;
}

#[tokio::test]
async fn subscription_limit_per_connection() {
    let server = start_with(Server::builder(config(|c: &mut Config| {
        c.limits.max_subscriptions = 3
    })))
    .await;
    let mut c = server.client().await;
    c.subscribe("a b").await;
    let (answer, _) = c.request("LHTTP/1.0 s\r\nsubscribe:c d\r\n\r\n").await;
    assert_eq!(answer.header("status"), Some("429"));
    assert_eq!(
        server.handle.hub().subscription_count(),
        2,
        "all or nothing"
    );
    c.subscribe("a c").await;
    assert_eq!(server.handle.hub().subscription_count(), 3);
    // Unsubscribing frees room.
    c.request("LHTTP/1.0 s\r\nunsubscribe:a\r\n\r\n").await;
    c.subscribe("d").await;
}

#[tokio::test]
async fn publish_with_no_subscribers_is_accepted() {
    let server = start().await;
    let mut c = server.client().await;
    c.publish("c", "nobody-here", "x").await;
    let (status, reply) = server
        .post("/publish", "LHTTP/1.0 c\r\npublish:nobody a b\r\n\r\nx")
        .await;
    assert_eq!(
        (status, reply.as_str()),
        (200, r#"{"channels":3,"deliveries":0}"#)
    );
}

async fn collect_for(c: &mut Client, ms: u64) -> Vec<lhttp_server::proto::Message> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, c.event()).await {
            Ok(Event::Message(m)) => out.push(m),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => return out,
        }
    }
}

#[tokio::test]
async fn http_publish_takes_a_json_message_too() {
    let server = start().await;
    let mut c = server.client().await;
    c.subscribe("room other").await;
    let post = |body: &'static str| {
        let url = server.http("/publish");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json; charset=utf-8")
                .body(body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, reply) = post(
        r#"{"channels": ["room", "other"], "command": "note", "headers": [["nick", "ann"], ["mood", "ok"]], "data": "hi \r\n\r\n there"}"#,
    )
    .await;
    assert_eq!(
        (status, reply.as_str()),
        (200, r#"{"channels":2,"deliveries":2}"#)
    );
    for channel in ["room", "other"] {
        let m = c.recv().await;
        assert_eq!(m.command(), "note");
        assert_eq!(m.header("publish"), Some(channel));
        assert_eq!(m.header("nick"), Some("ann"));
        assert_eq!(m.header("mood"), Some("ok"));
        assert_eq!(body(&m), "hi \r\n\r\n there");
    }
    let (status, _) = post(r#"{"channel": "room", "headers": {"nick": "bob"}}"#).await;
    assert_eq!(status, 200);
    let m = c.recv().await;
    assert_eq!((m.command(), m.header("nick")), ("chat", Some("bob")));
    // What cannot be a message is refused with a reason, and nothing is published.
    for bad in [
        r#"{"data": "nowhere"}"#,
        r#"{"channel": "room", "headers": {"publish": "elsewhere"}}"#,
        r#"{"channel": "room", "colour": "red"}"#,
        r#"{"channel": "bad>name"}"#,
        "not json",
    ] {
        let (status, reply) = post(bad).await;
        assert_eq!(status, 400, "{bad}: {reply}");
        assert!(reply.contains("\"reason\""), "{bad}: {reply}");
    }
    c.expect_silence(100).await;
}
