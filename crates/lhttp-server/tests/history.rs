//! Channel history on a single node, over real WebSocket connections: offsets and epochs,
//! recovery after a reconnect while others publish, `recent`, the `history` read, what is
//! reported when recovery is not possible, bounds, expiry, and permissions.

mod common;

use std::time::Duration;

use common::{
    TestServer, WAIT, body, config,
    history::{catch_up, chat, offset},
    start_with,
};
use lhttp_server::{ChannelOptions, ChannelRule, Config, Server, proto::Message};

/// A server whose channels `room.*` keep `size` messages in memory.
async fn server_keeping(size: usize, change: impl FnOnce(&mut Config)) -> TestServer {
    let config = config(|c| {
        c.history.store = "memory".into();
        c.channels.push(ChannelOptions {
            pattern: "room.*".into(),
            history_size: size,
            ..ChannelOptions::default()
        });
        change(c);
    });
    start_with(Server::builder(config)).await
}

#[tokio::test]
async fn messages_of_a_history_channel_carry_consecutive_offsets_and_one_epoch() {
    let server = server_keeping(100, |_| {}).await;
    let mut alice = server.client().await;
    alice.subscribe("room.a plain").await;
    // A publisher cannot forge its position.
    let mut bob = server.client().await;
    let (answer, _) = bob
        .request("LHTTP/1.0 chat\r\npublish:room.a\r\noffset:99\r\nepoch:forged\r\n\r\nhi")
        .await;
    assert_eq!(answer.command(), "ok");
    for i in 2..=5 {
        server
            .handle
            .publish(&chat("room.a", &format!("m{i}")))
            .unwrap();
    }
    server.handle.publish(&chat("plain", "no history")).unwrap();
    let mut epoch = None;
    for expected in 1..=5 {
        let m = alice.recv().await;
        assert_eq!(offset(&m), expected, "{m:?}");
        assert_eq!(m.headers().get_all("offset").count(), 1, "{m:?}");
        let e = m.header("epoch").unwrap().to_owned();
        assert_ne!(e, "forged");
        assert_eq!(*epoch.get_or_insert(e.clone()), e, "one epoch");
    }
    let plain = alice.recv().await;
    assert_eq!(body(&plain), "no history");
    assert!(plain.header("offset").is_none() && plain.header("epoch").is_none());
}

#[tokio::test]
async fn a_subscriber_that_reconnects_during_a_steady_publish_stream_gets_every_message_once_and_in_order()
 {
    const TOTAL: u64 = 3000;
    let server = server_keeping(4096, |_| {}).await;
    let handle = server.handle.clone();
    // The first subscribe learns the epoch and where the channel stands.
    let mut subscriber = server.client().await;
    let (answer, recent) = catch_up(
        &mut subscriber,
        "LHTTP/1.0 chat\r\nsubscribe:room.live\r\nrecent:0\r\n\r\n",
    )
    .await;
    assert!(recent.is_empty());
    assert_eq!(answer.header("offset"), Some("0"));
    let epoch = answer.header("epoch").unwrap().to_owned();
    let publisher = tokio::spawn(async move {
        for i in 1..=TOTAL {
            handle
                .publish(&chat("room.live", &format!("m{i}")))
                .unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut last = 0;
    let mut reconnects = 0;
    while last < TOTAL {
        // Read a little, then drop the connection without a goodbye, as a lost network does.
        for _ in 0..150 {
            if last == TOTAL {
                break;
            }
            let m = subscriber.recv().await;
            assert_eq!(offset(&m), last + 1, "after {reconnects} reconnects: {m:?}");
            assert_eq!(body(&m), format!("m{}", last + 1));
            last += 1;
        }
        if last == TOTAL {
            break;
        }
        drop(subscriber);
        reconnects += 1;
        subscriber = server.client().await;
        let (answer, missed) = catch_up(
            &mut subscriber,
            &format!(
                "LHTTP/1.0 chat\r\nsubscribe:room.live\r\nsince:{last}\r\nepoch:{epoch}\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(answer.command(), "subscribed", "{answer:?}");
        assert_eq!(answer.header("recovered"), Some("true"), "{answer:?}");
        for m in missed {
            assert_eq!(offset(&m), last + 1, "missed messages in order: {m:?}");
            last += 1;
        }
    }
    publisher.await.unwrap();
    assert!(reconnects >= 5, "only {reconnects} reconnects");
    subscriber.expect_silence(100).await;
}

#[tokio::test]
async fn recent_gives_the_last_messages_then_live_ones() {
    let server = server_keeping(100, |_| {}).await;
    for i in 1..=30 {
        server
            .handle
            .publish(&chat("room.r", &format!("m{i}")))
            .unwrap();
    }
    let mut page = server.client().await;
    let (answer, recent) = catch_up(
        &mut page,
        "LHTTP/1.0 chat\r\nsubscribe:room.r\r\nrecent:5\r\nrequest-id:7\r\n\r\n",
    )
    .await;
    assert_eq!(answer.command(), "subscribed");
    assert_eq!(answer.header("request-id"), Some("7"));
    assert_eq!(answer.header("offset"), Some("30"));
    assert!(answer.header("recovered").is_none(), "{answer:?}");
    let bodies: Vec<String> = recent.iter().map(body).collect();
    assert_eq!(bodies, ["m26", "m27", "m28", "m29", "m30"]);
    server.handle.publish(&chat("room.r", "live")).unwrap();
    let live = page.recv().await;
    assert_eq!((offset(&live), body(&live).as_str()), (31, "live"));
    // The request-id was answered by `subscribed`: no `ok` follows.
    page.expect_silence(100).await;
}

#[tokio::test]
async fn a_read_without_subscribing_returns_the_history_and_nothing_live() {
    let server = server_keeping(100, |_| {}).await;
    for i in 1..=3 {
        server
            .handle
            .publish(&chat("room.h", &format!("m{i}")))
            .unwrap();
    }
    let mut reader = server.client().await;
    let (answer, messages) = catch_up(
        &mut reader,
        "LHTTP/1.0 history\r\nchannel:room.h\r\nrecent:10\r\nrequest-id:h1\r\n\r\n",
    )
    .await;
    assert_eq!(answer.command(), "history");
    assert_eq!(answer.header("request-id"), Some("h1"));
    assert_eq!(messages.iter().map(offset).collect::<Vec<_>>(), [1, 2, 3]);
    let epoch = answer.header("epoch").unwrap().to_owned();
    let (answer, messages) = catch_up(
        &mut reader,
        &format!("LHTTP/1.0 history\r\nchannel:room.h\r\nsince:1\r\nepoch:{epoch}\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.header("recovered"), Some("true"));
    assert_eq!(messages.iter().map(offset).collect::<Vec<_>>(), [2, 3]);
    server.handle.publish(&chat("room.h", "later")).unwrap();
    reader.expect_silence(100).await;
    // A read names its channel and what it wants.
    let (status, reason, _) = {
        reader
            .send("LHTTP/1.0 history\r\nchannel:room.h\r\n\r\n")
            .await;
        reader.recv_error().await
    };
    assert_eq!(status, 400, "{reason}");
}

#[tokio::test]
async fn recovery_is_refused_plainly_when_history_was_trimmed_or_the_epoch_is_another() {
    let server = server_keeping(3, |_| {}).await;
    for i in 1..=10 {
        server
            .handle
            .publish(&chat("room.t", &format!("m{i}")))
            .unwrap();
    }
    let mut client = server.client().await;
    let (answer, kept) = catch_up(
        &mut client,
        "LHTTP/1.0 history\r\nchannel:room.t\r\nrecent:100\r\n\r\n",
    )
    .await;
    assert_eq!(kept.iter().map(offset).collect::<Vec<_>>(), [8, 9, 10]);
    let epoch = answer.header("epoch").unwrap().to_owned();
    // Offset 2 is long gone: messages 3 to 7 cannot be given.
    let (answer, missed) = catch_up(
        &mut client,
        &format!("LHTTP/1.0 chat\r\nsubscribe:room.t\r\nsince:2\r\nepoch:{epoch}\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.header("recovered"), Some("false"), "{answer:?}");
    assert!(missed.is_empty());
    assert_eq!(answer.header("offset"), Some("10"));
    // The last message kept still recovers: nothing was missed after it...
    let (answer, missed) = catch_up(
        &mut client,
        &format!("LHTTP/1.0 chat\r\nsubscribe:room.t\r\nsince:7\r\nepoch:{epoch}\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.header("recovered"), Some("true"), "{answer:?}");
    assert_eq!(missed.len(), 3);
    // ...but not in another epoch, nor past the end.
    for (since, epoch) in [(9, "0000000000000000"), (11, epoch.as_str())] {
        let (answer, missed) = catch_up(
            &mut client,
            &format!(
                "LHTTP/1.0 chat\r\nsubscribe:room.t\r\nsince:{since}\r\nepoch:{epoch}\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(answer.header("recovered"), Some("false"), "{answer:?}");
        assert!(missed.is_empty());
    }
    // A channel that keeps no history says so: no epoch.
    let (answer, _) = catch_up(
        &mut client,
        "LHTTP/1.0 chat\r\nsubscribe:other\r\nsince:1\r\nepoch:x\r\n\r\n",
    )
    .await;
    assert_eq!(answer.header("recovered"), Some("false"));
    assert!(answer.header("epoch").is_none(), "{answer:?}");
    assert_eq!(server.metric("history_trimmed_total"), 7);
}

#[tokio::test]
async fn catch_up_headers_are_checked() {
    let server = server_keeping(10, |_| {}).await;
    let mut client = server.client().await;
    for bad in [
        "LHTTP/1.0 chat\r\nsubscribe:room.a room.b\r\nrecent:1\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:room.a\r\nsince:1\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:room.a\r\nsince:x\r\nepoch:e\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:room.a\r\nsince:1\r\nepoch:e\r\nrecent:2\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:room.a\r\nqueue:w\r\nrecent:2\r\n\r\n",
    ] {
        client.send(bad).await;
        let (status, reason, _) = client.recv_error().await;
        assert_eq!(status, 400, "{bad:?}: {reason}");
    }
    // Nothing was subscribed by the refused messages.
    assert_eq!(server.handle.hub().subscriber_count("room.a"), 0);
}

#[tokio::test]
async fn history_reads_follow_the_subscribe_rules() {
    let server = server_keeping(10, |c| {
        c.auth.rules.push(ChannelRule {
            channels: "room.public".into(),
            subscribe: true,
            publish: true,
            anonymous: true,
            ..ChannelRule::default()
        });
    })
    .await;
    server
        .handle
        .publish(&chat("room.secret", "for admins"))
        .unwrap();
    let mut guest = server.client().await;
    for text in [
        "LHTTP/1.0 history\r\nchannel:room.secret\r\nrecent:10\r\n\r\n",
        "LHTTP/1.0 chat\r\nsubscribe:room.secret\r\nrecent:10\r\n\r\n",
    ] {
        guest.send(text).await;
        let (status, reason, _) = guest.recv_error().await;
        assert_eq!(status, 403, "{text:?}: {reason}");
    }
    let (answer, _) = catch_up(
        &mut guest,
        "LHTTP/1.0 history\r\nchannel:room.public\r\nrecent:10\r\n\r\n",
    )
    .await;
    assert_eq!(answer.command(), "history");
}

#[tokio::test]
async fn history_is_bounded_over_the_server_in_channels_and_bytes() {
    let server = server_keeping(100, |c| {
        c.history.max_channels = 2;
    })
    .await;
    let mut client = server.client().await;
    client.subscribe("room.a room.b room.c").await;
    for channel in ["room.a", "room.b", "room.c"] {
        server.handle.publish(&chat(channel, "x")).unwrap();
    }
    let got: Vec<Message> = vec![
        client.recv().await,
        client.recv().await,
        client.recv().await,
    ];
    assert!(got[0].header("offset").is_some() && got[1].header("offset").is_some());
    assert!(
        got[2].header("offset").is_none(),
        "a third channel beyond history.max_channels has no history: {:?}",
        got[2]
    );
    assert_eq!(server.metric("history_channels"), 2);
    assert_eq!(server.metric("history_refused_total"), 1);

    // A server-wide byte budget smaller than one channel's bound: the channel drops its own
    // oldest messages to stay within it.
    let server = server_keeping(100, |c| {
        c.history.max_bytes = 4096;
    })
    .await;
    for i in 0..100 {
        server
            .handle
            .publish(&chat("room.big", &format!("{i:0>200}")))
            .unwrap();
    }
    assert!(server.metric("history_bytes") <= 4096);
    let mut client = server.client().await;
    let (_, kept) = catch_up(
        &mut client,
        "LHTTP/1.0 history\r\nchannel:room.big\r\nrecent:100\r\n\r\n",
    )
    .await;
    assert!(!kept.is_empty() && kept.len() < 20, "{} kept", kept.len());
    assert_eq!(offset(kept.last().unwrap()), 100);
}

#[tokio::test]
async fn messages_expire_on_their_own_clock() {
    let server = server_keeping(100, |c| {
        c.channels[0].history_ttl_secs = 1;
    })
    .await;
    server.handle.publish(&chat("room.e", "soon gone")).unwrap();
    assert!(server.metric("history_bytes") > 0);
    // Nothing touches the channel meanwhile: expiry must not wait for traffic.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("history_expired_total") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = server.client().await;
    let (answer, kept) = catch_up(
        &mut client,
        "LHTTP/1.0 history\r\nchannel:room.e\r\nrecent:10\r\n\r\n",
    )
    .await;
    assert!(kept.is_empty());
    // The channel's position is kept: a client that had everything still recovers.
    let epoch = answer.header("epoch").unwrap();
    assert_eq!(answer.header("offset"), Some("1"));
    let (answer, _) = catch_up(
        &mut client,
        &format!("LHTTP/1.0 history\r\nchannel:room.e\r\nsince:1\r\nepoch:{epoch}\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.header("recovered"), Some("true"));
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let server = common::start().await;
    let mut client = server.client().await;
    client.send("LHTTP/1.0 ping\r\nrequest-id:p1\r\n\r\n").await;
    let pong = client.recv().await;
    assert_eq!(pong.command(), "pong");
    assert_eq!(pong.header("request-id"), Some("p1"));
    client.send("LHTTP/1.0 ping\r\n\r\n").await;
    assert_eq!(client.recv().await.command(), "pong");
}

#[test]
fn settings_that_cannot_work_are_refused_at_start() {
    let refused = |change: &dyn Fn(&mut Config), what: &str| {
        let mut c = Config::default();
        c.history.store = "memory".into();
        c.channels.push(ChannelOptions {
            pattern: "room.*".into(),
            history_size: 10,
            ..ChannelOptions::default()
        });
        change(&mut c);
        let error = match Server::builder(c).build() {
            Ok(_) => panic!("accepted: {what}"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(what), "{error}");
    };
    refused(
        &|c| c.channels[0].pattern = "room..x".into(),
        "channels pattern",
    );
    refused(
        &|c| c.channels[0].history_size = c.limits.outbound_queue + 1,
        "limits.outbound_queue",
    );
    refused(
        &|c| c.channels[0].history_bytes = c.limits.outbound_queue_bytes + 1,
        "limits.outbound_queue_bytes",
    );
    refused(&|c| c.channels[0].history_ttl_secs = 0, "history_ttl_secs");
    refused(&|c| c.history.store = "tape".into(), "history.store");
    // A cluster shares one history, in JetStream; JetStream needs a cluster.
    refused(
        &|c| c.cluster.nats = vec!["nats://127.0.0.1:4222".into()],
        "history.store = \"jetstream\"",
    );
    refused(
        &|c| c.history.store = "jetstream".into(),
        "needs [cluster] nats",
    );
    refused(
        &|c| {
            c.cluster.nats = vec!["nats://127.0.0.1:4222".into()];
            c.history.store = "jetstream".into();
            c.history.replicas = 0;
        },
        "history.replicas",
    );
    refused(
        &|c| {
            c.gateway.push(lhttp_server::GatewayRoute {
                path: "/api/".into(),
                channel: "room.api".into(),
                queue: "workers".into(),
                timeout_ms: 1000,
                at_least_once: false,
            })
        },
        "gateway channel",
    );
}

struct Echo;

#[lhttp_server::async_trait]
impl lhttp_server::Processor for Echo {
    async fn on_message(
        &self,
        _ctx: &mut lhttp_server::Context<'_>,
    ) -> Result<(), lhttp_server::Rejection> {
        Ok(())
    }
}

#[test]
fn commands_the_server_answers_itself_take_no_processor() {
    for command in ["auth", "ping", "history"] {
        let built = Server::builder(Config::default())
            .processor(command, Echo)
            .build();
        assert!(built.is_err(), "a processor for {command} was accepted");
    }
}
