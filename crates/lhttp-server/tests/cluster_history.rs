//! Channel history in a cluster: in-process lhttp nodes keep it in a real `nats-server -js`
//! (JetStream), so a client recovers through any node, exactly once and in order, and the
//! history outlives the node it was published on. Every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use common::{
    TestServer, WAIT, body, config,
    history::{catch_up, chat, offset},
    nats::{NATS_UP, NatsServer},
    start_with,
};
use futures_util::TryStreamExt;
use lhttp_server::{ChannelOptions, Server, proto::Message};

/// A node of the cluster through `nats_url` whose channels `room.*` keep `size` messages in
/// JetStream.
async fn node(nats_url: &str, size: usize) -> TestServer {
    let url = nats_url.to_owned();
    let server = start_with(Server::builder(config(move |c| {
        c.cluster.nats = vec![url];
        c.history.store = "jetstream".into();
        c.channels.push(ChannelOptions {
            pattern: "room.*".into(),
            history_size: size,
            ..ChannelOptions::default()
        });
    })))
    .await;
    let deadline = Instant::now() + NATS_UP;
    while server.handle.cluster_connected() != Some(true) {
        assert!(Instant::now() < deadline, "node not connected to NATS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

/// Reads `room.x`'s history through `server` until it holds `n` messages; returns the answer
/// and them.
async fn history_of(server: &TestServer, channel: &str, n: usize) -> (Message, Vec<Message>) {
    let mut reader = server.client().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let read = catch_up(
            &mut reader,
            &format!("LHTTP/1.0 history\r\nchannel:{channel}\r\nrecent:1000\r\n\r\n"),
        )
        .await;
        if read.1.len() >= n {
            return read;
        }
        assert!(
            Instant::now() < deadline,
            "history of {channel} holds {} messages, expected {n}",
            read.1.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_subscriber_that_reconnects_to_any_node_during_a_publish_stream_gets_every_message_once_and_in_order()
 {
    const TOTAL: u64 = 1500;
    let nats = NatsServer::start_jetstream();
    let a = node(&nats.url(), 4096).await;
    let b = node(&nats.url(), 4096).await;
    let nodes = [&a, &b];
    let mut subscriber = a.client().await;
    let (answer, recent) = catch_up(
        &mut subscriber,
        "LHTTP/1.0 chat\r\nsubscribe:room.live\r\nrecent:0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.command(), "subscribed", "{answer:?}");
    assert!(recent.is_empty());
    assert_eq!(answer.header("offset"), Some("0"), "{answer:?}");
    let epoch = answer.header("epoch").expect("an epoch").to_owned();
    // Both nodes publish, in turn: the offsets are the channel's, whoever published.
    let handles = [a.handle.clone(), b.handle.clone()];
    let publisher = tokio::spawn(async move {
        for i in 1..=TOTAL {
            handles[(i % 2) as usize]
                .publish(&chat("room.live", &format!("m{i}")))
                .unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let mut seen = Vec::with_capacity(TOTAL as usize);
    let mut last = 0;
    let mut reconnects = 0;
    while last < TOTAL {
        for _ in 0..100 {
            if last == TOTAL {
                break;
            }
            let m = subscriber.recv().await;
            assert_eq!(offset(&m), last + 1, "after {reconnects} reconnects: {m:?}");
            assert_eq!(m.header("epoch"), Some(epoch.as_str()));
            seen.push(body(&m));
            last += 1;
        }
        if last == TOTAL {
            break;
        }
        // Dropped without a goodbye; back through the other node.
        drop(subscriber);
        reconnects += 1;
        subscriber = nodes[reconnects % 2].client().await;
        let (answer, missed) = catch_up(
            &mut subscriber,
            &format!(
                "LHTTP/1.0 chat\r\nsubscribe:room.live\r\nsince:{last}\r\nepoch:{epoch}\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(answer.header("recovered"), Some("true"), "{answer:?}");
        assert_eq!(answer.header("epoch"), Some(epoch.as_str()));
        for m in missed {
            assert_eq!(offset(&m), last + 1, "missed messages in order: {m:?}");
            seen.push(body(&m));
            last += 1;
        }
    }
    publisher.await.unwrap();
    assert!(reconnects >= 5, "only {reconnects} reconnects");
    // Every message exactly once: each node's own in its publish order.
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        TOTAL as usize,
        "a message was lost or repeated"
    );
    for parity in [0, 1] {
        let own: Vec<u64> = seen
            .iter()
            .map(|b| b[1..].parse::<u64>().unwrap())
            .filter(|i| i % 2 == parity)
            .collect();
        assert!(own.windows(2).all(|w| w[0] < w[1]), "publish order kept");
    }
    subscriber.expect_silence(200).await;
}

#[tokio::test]
async fn history_outlives_its_node_is_bounded_in_jetstream_and_a_lost_stream_is_a_new_epoch() {
    let nats = NatsServer::start_jetstream();
    let mut a = node(&nats.url(), 5).await;
    let b = node(&nats.url(), 5).await;
    // A wildcard subscriber of another node still gets every message, live.
    let mut watcher = b.client().await;
    watcher.subscribe("room.*").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // its NATS subscription
    for i in 1..=8 {
        a.handle.publish(&chat("room.x", &format!("m{i}"))).unwrap();
    }
    for i in 1..=8 {
        let m = watcher.recv().await;
        assert_eq!(body(&m), format!("m{i}"));
        assert_eq!(m.header("publish"), Some("room.x"));
    }
    let (answer, kept) = history_of(&b, "room.x", 5).await;
    // history_size 5: JetStream kept the last five.
    assert_eq!(kept.iter().map(offset).collect::<Vec<_>>(), [4, 5, 6, 7, 8]);
    let epoch = answer.header("epoch").unwrap().to_owned();

    // The node it was published on goes; a new one serves the same history.
    a.handle.shutdown();
    a.stopped().await;
    drop(a);
    let c = node(&nats.url(), 5).await;
    let (answer, kept) = history_of(&c, "room.x", 5).await;
    assert_eq!(answer.header("epoch"), Some(epoch.as_str()));
    assert_eq!(
        kept.iter().map(body).collect::<Vec<_>>(),
        ["m4", "m5", "m6", "m7", "m8"]
    );
    let mut reader = c.client().await;
    let (answer, missed) = catch_up(
        &mut reader,
        &format!("LHTTP/1.0 history\r\nchannel:room.x\r\nsince:6\r\nepoch:{epoch}\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.header("recovered"), Some("true"), "{answer:?}");
    assert_eq!(missed.iter().map(offset).collect::<Vec<_>>(), [7, 8]);
    // Trimmed: offset 2 is gone.
    let (answer, missed) = catch_up(
        &mut reader,
        &format!("LHTTP/1.0 history\r\nchannel:room.x\r\nsince:2\r\nepoch:{epoch}\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.header("recovered"), Some("false"), "{answer:?}");
    assert!(missed.is_empty());

    // The stream is lost (an operator deleted it): its channel starts a new epoch.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    assert_eq!(names.len(), 1, "one stream per history channel: {names:?}");
    js.delete_stream(&names[0]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let (answer, missed) = loop {
        let (answer, missed) = catch_up(
            &mut reader,
            &format!("LHTTP/1.0 history\r\nchannel:room.x\r\nsince:8\r\nepoch:{epoch}\r\n\r\n"),
        )
        .await;
        if answer.header("epoch") != Some(epoch.as_str()) || Instant::now() > deadline {
            break (answer, missed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer.header("recovered"), Some("false"), "{answer:?}");
    assert!(missed.is_empty());
    assert_ne!(answer.header("epoch"), Some(epoch.as_str()), "{answer:?}");
    assert_eq!(answer.header("offset"), Some("0"), "{answer:?}");
    b.handle.publish(&chat("room.x", "after")).unwrap();
    let (_, kept) = history_of(&c, "room.x", 1).await;
    assert_eq!(kept.iter().map(offset).collect::<Vec<_>>(), [1]);
    assert_eq!(body(&kept[0]), "after");
}

#[tokio::test]
async fn without_jetstream_a_catch_up_is_still_answered_in_bounded_time_and_other_channels_work() {
    let nats = NatsServer::start(); // no -js
    let a = node(&nats.url(), 10).await;
    let b = node(&nats.url(), 10).await;
    let mut client = a.client().await;
    let asked = Instant::now();
    let (answer, missed) = catch_up(
        &mut client,
        "LHTTP/1.0 chat\r\nsubscribe:room.y\r\nsince:3\r\nepoch:0123456789abcdef\r\n\r\n",
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(answer.command(), "subscribed");
    assert_eq!(answer.header("recovered"), Some("false"), "{answer:?}");
    assert!(answer.header("epoch").is_none(), "{answer:?}");
    assert!(missed.is_empty());
    // Channels without history cross nodes as ever.
    client.subscribe("plain").await;
    let deadline = Instant::now() + NATS_UP;
    loop {
        b.handle.publish(&chat("plain", "still here")).unwrap();
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), client.recv()).await {
            assert_eq!(body(&m), "still here");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "plain channel did not cross nodes"
        );
    }
}
