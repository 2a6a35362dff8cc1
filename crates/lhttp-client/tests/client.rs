//! The SDK against a real in-process server over real sockets.

mod common;

use std::time::Duration;

use common::{WAIT, start, start_on};
use futures_util::StreamExt;
use lhttp_client::{Client, ConnectionState, Error, Message, MultipartBuilder, Subscription};
use tokio::sync::watch;

/// The next message of `sub`, or a panic after [`WAIT`].
async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription ended")
}

/// Waits until the state is `wanted`; returns every state seen on the way.
async fn wait_state(
    states: &mut watch::Receiver<ConnectionState>,
    wanted: ConnectionState,
    seen: &mut Vec<ConnectionState>,
) {
    let result = tokio::time::timeout(WAIT, async {
        loop {
            let now = *states.borrow_and_update();
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if now == wanted {
                return;
            }
            if states.changed().await.is_err() {
                panic!("state channel closed; seen {seen:?}");
            }
        }
    })
    .await;
    assert!(result.is_ok(), "never reached {wanted:?}; seen {seen:?}");
}

#[tokio::test]
async fn published_message_arrives_with_exact_bytes() {
    let server = start().await;
    let subscriber = Client::connect(&server.url()).await.expect("connect");
    let publisher = Client::connect(&server.url()).await.expect("connect");
    let mut room = subscriber.subscribe(["room"]).await.expect("subscribe");
    assert_eq!(room.channels(), ["room"]);

    // `send` writes exactly the message, with no request-id.
    let message = Message::builder("chat")
        .header("from", "ann")
        .header("publish", "room")
        .body("hello\r\n\r\nworld")
        .build()
        .unwrap();
    publisher.send(message).await.expect("send");
    let got = next(&mut room).await;
    assert_eq!(
        &got.to_bytes()[..],
        b"LHTTP/1.0 chat\r\nfrom:ann\r\npublish:room\r\n\r\nhello\r\n\r\nworld"
    );

    // `publish_with` waits for the server's ok; the request-id that asked for it stays
    // between the publisher and the server.
    publisher
        .publish_with("room", "note", [("k", "v")], "second")
        .await
        .expect("publish");
    let got = next(&mut room).await;
    assert_eq!(
        &got.to_bytes()[..],
        b"LHTTP/1.0 note\r\nk:v\r\npublish:room\r\n\r\nsecond"
    );

    // Multipart bodies survive the trip and can be read back.
    let mut parts = MultipartBuilder::new();
    parts.part([("name", "a.txt")], "first").unwrap();
    parts.part([("name", "b.txt")], "second").unwrap();
    let upload = parts
        .into_message(Message::builder("upload").header("publish", "room"))
        .unwrap();
    publisher.request(upload).await.expect("multipart publish");
    let got = next(&mut room).await;
    let parts = got.parts().expect("valid parts").expect("multipart");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].headers.get("name"), Some("b.txt"));
    assert_eq!(&parts[1].body[..], b"second");
}

#[tokio::test]
async fn refusals_become_typed_errors() {
    let server = start().await;
    let client = Client::connect(&server.url()).await.expect("connect");

    match client.subscribe([">"]).await {
        Err(Error::Server { status, reason, .. }) => {
            assert_eq!(status, 400);
            assert!(!reason.is_empty());
        }
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
    let err = client
        .publish("a*b", "x")
        .await
        .expect_err("invalid channel");
    assert_eq!(err.status(), Some(400));

    let unknown = Message::builder("no-such-command").build().unwrap();
    let err = client.request(unknown).await.expect_err("unknown command");
    assert_eq!(err.status(), Some(404), "{err}");

    // Local checks catch what cannot be a channel at all.
    assert!(matches!(
        client.subscribe(["two words"]).await,
        Err(Error::InvalidChannel(_))
    ));

    // The connection survived all of it.
    let mut room = client.subscribe(["room"]).await.expect("subscribe");
    client.publish("room", "still here").await.expect("publish");
    assert_eq!(&next(&mut room).await.body()[..], b"still here");
}

#[tokio::test]
async fn errors_without_request_id_arrive_on_incoming() {
    let server = start().await;
    let client = Client::connect(&server.url()).await.expect("connect");
    let mut incoming = client.incoming().await.expect("incoming");
    client
        .send(Message::builder("no-such-command").build().unwrap())
        .await
        .expect("send");
    let answer = tokio::time::timeout(WAIT, incoming.next())
        .await
        .expect("an answer")
        .expect("stream open");
    assert_eq!(answer.command(), "error");
    assert_eq!(answer.header("status"), Some("404"));
}

#[tokio::test]
async fn unsubscribe_and_drop_stop_delivery() {
    let server = start().await;
    let client = Client::connect(&server.url()).await.expect("connect");
    let sub = client.subscribe(["a"]).await.expect("subscribe");
    assert_eq!(server.handle.hub().subscriber_count("a"), 1);
    sub.unsubscribe().await.expect("unsubscribe");
    // Confirmed by the server before `unsubscribe` returned.
    assert_eq!(server.handle.hub().subscriber_count("a"), 0);
    let report = server
        .handle
        .publish(
            &Message::builder("chat")
                .header("publish", "a")
                .build()
                .unwrap(),
        )
        .expect("publish");
    assert_eq!(report.deliveries, 0);

    let sub = client.subscribe(["b"]).await.expect("subscribe");
    drop(sub);
    server.wait_subscribers("b", 0).await;
}

#[tokio::test]
async fn two_subscriptions_to_one_channel_share_it() {
    let server = start().await;
    let client = Client::connect(&server.url()).await.expect("connect");
    let mut first = client.subscribe(["room"]).await.expect("subscribe");
    let mut second = client
        .subscribe(["room", "other"])
        .await
        .expect("subscribe");
    assert_eq!(server.handle.hub().subscriber_count("room"), 1);

    client.publish("room", "one").await.expect("publish");
    assert_eq!(&next(&mut first).await.body()[..], b"one");
    assert_eq!(&next(&mut second).await.body()[..], b"one");

    // The server keeps the channel while one local subscription still holds it.
    first.unsubscribe().await.expect("unsubscribe");
    assert_eq!(server.handle.hub().subscriber_count("room"), 1);
    client.publish("room", "two").await.expect("publish");
    assert_eq!(&next(&mut second).await.body()[..], b"two");

    second.unsubscribe().await.expect("unsubscribe");
    assert_eq!(server.handle.hub().subscriber_count("room"), 0);
    assert_eq!(server.handle.hub().subscriber_count("other"), 0);
}

#[tokio::test]
async fn slow_subscription_drops_newest_and_counts() {
    let server = start().await;
    let client = Client::builder(server.url())
        .subscription_capacity(2)
        .connect()
        .await
        .expect("connect");
    let mut sub = client.subscribe(["fast"]).await.expect("subscribe");
    for i in 0..5 {
        let message = Message::builder("tick")
            .header("publish", "fast")
            .body(format!("{i}"))
            .build()
            .unwrap();
        server.handle.publish(&message).expect("publish");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while sub.dropped() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dropped {}",
            sub.dropped()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(&next(&mut sub).await.body()[..], b"0");
    assert_eq!(&next(&mut sub).await.body()[..], b"1");
    // The client still works: a request round trip goes through.
    client.publish("fast", "5").await.expect("publish");
    assert_eq!(&next(&mut sub).await.body()[..], b"5");
    assert_eq!(sub.dropped(), 3);
}

#[tokio::test]
async fn reconnects_to_a_restarted_server_and_restores_subscriptions() {
    let first = start().await;
    let addr = first.addr;
    let client = Client::builder(first.url())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    let mut room = client.subscribe(["room"]).await.expect("subscribe");
    let mut other = client.subscribe(["room", "news"]).await.expect("subscribe");
    let mut states = client.state_changes();
    let mut seen = Vec::new();
    wait_state(&mut states, ConnectionState::Connected, &mut seen).await;

    first.stop().await;
    wait_state(&mut states, ConnectionState::Disconnected, &mut seen).await;
    let err = client.publish("room", "lost").await.expect_err("no server");
    assert!(matches!(err, Error::NotConnected), "{err}");

    let second = start_on(addr).await;
    wait_state(&mut states, ConnectionState::Connected, &mut seen).await;
    assert_eq!(
        seen,
        [
            ConnectionState::Connected,
            ConnectionState::Disconnected,
            ConnectionState::Connected
        ]
    );
    // `Connected` is announced after the subscriptions are back on the new server.
    assert_eq!(second.handle.hub().subscriber_count("room"), 1);
    assert_eq!(second.handle.hub().subscriber_count("news"), 1);

    let message = Message::builder("chat")
        .header("publish", "room")
        .body("after restart")
        .build()
        .unwrap();
    second.handle.publish(&message).expect("publish");
    assert_eq!(&next(&mut room).await.body()[..], b"after restart");
    assert_eq!(&next(&mut other).await.body()[..], b"after restart");

    // Requests work on the new connection too.
    client.publish("news", "fresh").await.expect("publish");
    assert_eq!(&next(&mut other).await.body()[..], b"fresh");
}

#[tokio::test]
async fn without_reconnect_a_lost_connection_closes_the_client() {
    let server = start().await;
    let client = Client::builder(server.url())
        .reconnect(false)
        .connect()
        .await
        .expect("connect");
    let mut room = client.subscribe(["room"]).await.expect("subscribe");
    let mut states = client.state_changes();
    server.stop().await;
    let mut seen = Vec::new();
    wait_state(&mut states, ConnectionState::Closed, &mut seen).await;
    let end = tokio::time::timeout(WAIT, room.next())
        .await
        .expect("stream ends");
    assert!(end.is_none());
    assert!(matches!(
        client.publish("room", "x").await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn close_ends_subscriptions() {
    let server = start().await;
    let client = Client::connect(&server.url()).await.expect("connect");
    let mut room = client.subscribe(["room"]).await.expect("subscribe");
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
    let end = tokio::time::timeout(WAIT, room.next())
        .await
        .expect("stream ends");
    assert!(end.is_none());
    server.wait_subscribers("room", 0).await;
}

#[tokio::test]
async fn connection_errors_are_clear() {
    // A port nobody listens on: bind one, learn its number, free it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    for url in [
        format!("ws://{addr}/"),
        format!("wss://{addr}/"),
        format!("tcp://{addr}"),
        format!("tls://{addr}"),
        "unix:///nonexistent/lhttp.sock".to_owned(),
    ] {
        match Client::connect(&url).await {
            Err(Error::Connect { url: tried, .. }) => assert_eq!(tried, url),
            other => panic!("{url}: expected a connect error, got {other:?}"),
        }
    }
    assert!(matches!(
        Client::connect("http://127.0.0.1:1/").await,
        Err(Error::InvalidUrl { .. })
    ));
}

#[tokio::test]
async fn a_silent_server_is_detected_by_pings() {
    // Completes the WebSocket handshake, then neither reads nor writes: a dead network path.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("handshake");
        std::future::pending::<()>().await;
        drop(ws);
    });
    let client = Client::builder(url)
        .reconnect(false)
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Duration::from_millis(100))
        .connect()
        .await
        .expect("connect");
    let mut states = client.state_changes();
    let mut seen = Vec::new();
    wait_state(&mut states, ConnectionState::Closed, &mut seen).await;
    silent.abort();
}

#[tokio::test]
async fn pings_keep_a_healthy_connection_open() {
    let server = start().await;
    let client = Client::builder(server.url())
        .ping_interval(Some(Duration::from_millis(60)))
        .ping_timeout(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    let mut room = client.subscribe(["room"]).await.expect("subscribe");
    // Many ping intervals pass; the server's pongs keep the connection alive. (60 ms and
    // 200 ms: a loaded 2-core machine can stall a task for tens of milliseconds.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(client.state(), ConnectionState::Connected);
    client.publish("room", "alive").await.expect("publish");
    assert_eq!(&next(&mut room).await.body()[..], b"alive");
    // One connection all along: no reconnect happened.
    assert!(
        server
            .handle
            .render_metrics()
            .contains("lhttp_connections_opened_total 1\n")
    );
}

#[tokio::test]
async fn a_wildcard_subscription_receives_the_channels_it_matches() {
    let server = start().await;
    let client = Client::connect(&server.url()).await.expect("connect");
    let mut temps = client
        .subscribe(["sensor.*.temp"])
        .await
        .expect("subscribe");
    let mut one = client
        .subscribe(["sensor.1.temp"])
        .await
        .expect("subscribe");
    for (channel, body) in [
        ("sensor.1.temp", "21"),
        ("sensor.1.hum", "40"),
        ("sensor.2.temp", "19"),
    ] {
        client.publish(channel, body).await.expect("publish");
    }
    // The pattern's subscription gets what matches, with the concrete channel; it also sees
    // the copy of sensor.1.temp that the exact subscription brought, once per server copy.
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = next(&mut temps).await;
        got.push(format!(
            "{}={}",
            m.header("publish").unwrap(),
            String::from_utf8_lossy(m.body())
        ));
    }
    got.sort();
    assert_eq!(
        got,
        ["sensor.1.temp=21", "sensor.1.temp=21", "sensor.2.temp=19"]
    );
    let m = next(&mut one).await;
    assert_eq!(&m.body()[..], b"21");
    assert_eq!(server.handle.hub().pattern_count(), 1);
    temps.unsubscribe().await.expect("unsubscribe");
    assert_eq!(server.handle.hub().pattern_count(), 0);
}

#[tokio::test]
async fn a_restarting_server_s_retry_hint_is_waited_for_before_reconnecting() {
    let server = start().await;
    let addr = server.addr;
    // Backoff alone would be back within 20 ms.
    let client = Client::builder(format!("ws://{addr}/"))
        .backoff(Duration::from_millis(10), Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut states = client.state_changes();
    server.handle.shutdown(); // close 1012 "server restarting; retry in N ms", N >= 250
    let down = states.wait_for(|s| *s == ConnectionState::Disconnected);
    tokio::time::timeout(WAIT, down).await.unwrap().unwrap();
    let lost = std::time::Instant::now();
    drop(server);
    let _back = start_on(addr).await;
    let mut states = client.state_changes();
    let up = states.wait_for(|s| *s == ConnectionState::Connected);
    tokio::time::timeout(WAIT, up).await.unwrap().unwrap();
    let waited = lost.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "reconnected after {waited:?}, before the server's hint"
    );
}
