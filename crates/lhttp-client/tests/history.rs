//! Channel history through the SDK, against a real in-process server that keeps history, over
//! real sockets: a subscriber whose connection is cut gets what it missed, once and in order;
//! a gap is reported when the server no longer has it; `subscribe_recent` and `history` read
//! what is kept; a silent network path is found by ping and replaced. The network is broken
//! through a TCP relay on loopback that the test controls.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{
    WAIT, everywhere::everywhere, history_config, keep_history, relay::Relay, start_on_with,
    start_with,
};
use lhttp_client::{
    Client, ClientBuilder, ConnectionState, Event, HistoryQuery, Message, Position, Subscription,
};
use lhttp_server::ServerHandle;
use tokio::sync::watch;

fn chat(channel: &str, body: &str) -> Message {
    Message::builder("chat")
        .header("publish", channel.to_owned())
        .body(body.to_owned())
        .build()
        .unwrap()
}

fn publish(server: &ServerHandle, channel: &str, body: &str) {
    server.publish(&chat(channel, body)).expect("publish");
}

/// The next event of `sub`, or a panic after [`WAIT`].
async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(WAIT, sub.recv_event())
        .await
        .expect("timed out waiting for an event")
        .expect("subscription ended")
}

/// The next event of `sub`, which must be a message.
async fn next_message(sub: &mut Subscription) -> Message {
    match next_event(sub).await {
        Event::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn body(message: &Message) -> String {
    String::from_utf8_lossy(message.body()).into_owned()
}

fn offset(message: &Message) -> u64 {
    Position::of(message).expect("an offset").offset
}

fn bodies(messages: &[Message]) -> Vec<String> {
    messages.iter().map(body).collect()
}

async fn wait_state(states: &mut watch::Receiver<ConnectionState>, wanted: ConnectionState) {
    let reached = tokio::time::timeout(WAIT, states.wait_for(|state| *state == wanted))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        reached,
        "never reached {wanted:?} (now {:?})",
        *states.borrow()
    );
}

/// The address in a `tcp://` URL.
fn tcp_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("tcp://").parse().expect("address")
}

/// The address behind a `wss://localhost:port/` URL.
fn wss_addr(url: &str) -> SocketAddr {
    let port = url
        .trim_start_matches("wss://localhost:")
        .trim_end_matches('/');
    format!("127.0.0.1:{port}").parse().expect("address")
}

/// Through the relay, a URL of the same transport as `url` and its client builder.
fn through(relay: &Relay, url: &str, builder: impl Fn(&str) -> ClientBuilder) -> ClientBuilder {
    let url = match url.starts_with("tcp://") {
        true => relay.tcp_url(),
        false => format!("wss://localhost:{}/", relay.addr.port()),
    };
    builder(&url)
}

#[tokio::test]
async fn a_subscriber_cut_off_twice_during_a_steady_stream_receives_every_message_once_in_order() {
    let server = everywhere(false, keep_history).await;
    for (url, target) in [
        (&server.wss, wss_addr(&server.wss)),
        (&server.tcp, tcp_addr(&server.tcp)),
    ] {
        let relay = Relay::start(target).await;
        let client = through(&relay, url, |u| server.builder(u))
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        let channel = format!("feed.steady-{}", &url[..3]);
        let mut sub = client.subscribe([channel.as_str()]).await.unwrap();
        let total = 300;
        let collector = tokio::spawn(async move {
            let mut messages = Vec::new();
            while messages.len() < total + 1 {
                messages.push(next_message(&mut sub).await);
            }
            (messages, sub)
        });
        let mut published_while_away = 0;
        for i in 1..=total {
            if client.state() == ConnectionState::Disconnected {
                published_while_away += 1;
            }
            publish(&server.handle, &channel, &format!("m{i}"));
            if i == 100 || i == 200 {
                relay.cut();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut states = client.state_changes();
        wait_state(&mut states, ConnectionState::Connected).await;
        // A last message: a copy of an earlier one would have come before it.
        publish(&server.handle, &channel, "end");
        let (messages, sub) = tokio::time::timeout(WAIT * 2, collector)
            .await
            .expect("every message in time")
            .expect("collector");

        let mut expected: Vec<String> = (1..=total).map(|i| format!("m{i}")).collect();
        expected.push("end".into());
        assert_eq!(bodies(&messages), expected, "{url}");
        let offsets: Vec<u64> = messages.iter().map(offset).collect();
        assert_eq!(offsets, (1..=total as u64 + 1).collect::<Vec<_>>(), "{url}");
        assert_eq!(sub.gaps(), 0, "{url}");
        assert_eq!(relay.accepted(), 3, "{url}: two reconnections");
        assert!(
            published_while_away > 0,
            "{url}: the stream went on while the client was away"
        );
        client.close().await;
    }
}

#[tokio::test]
async fn a_gap_is_reported_when_the_history_no_longer_holds_what_was_missed() {
    let server = start_with(history_config()).await;
    let relay = Relay::start(server.addr).await;
    let client = Client::builder(relay.ws_url())
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let mut sub = client.subscribe(["short.trimmed"]).await.unwrap();
    for i in 1..=3 {
        publish(&server.handle, "short.trimmed", &format!("m{i}"));
    }
    let mut epoch = String::new();
    for i in 1..=3 {
        let message = next_message(&mut sub).await;
        assert_eq!(body(&message), format!("m{i}"));
        epoch = Position::of(&message).unwrap().epoch;
    }

    // Away while ten messages are published: the channel keeps only the last five.
    let mut states = client.state_changes();
    relay.refuse(true);
    relay.cut();
    wait_state(&mut states, ConnectionState::Disconnected).await;
    for i in 4..=13 {
        publish(&server.handle, "short.trimmed", &format!("m{i}"));
    }
    relay.refuse(false);
    let gap = match next_event(&mut sub).await {
        Event::Gap(gap) => gap,
        other => panic!("expected a gap, got {other:?}"),
    };
    assert_eq!(gap.channel, "short.trimmed");
    assert_eq!(
        gap.last,
        Position {
            epoch: epoch.clone(),
            offset: 3
        }
    );
    assert_eq!(
        gap.epoch.as_deref(),
        Some(epoch.as_str()),
        "the same epoch: trimmed, not lost with a restart"
    );
    assert_eq!(gap.offset, 13);
    wait_state(&mut states, ConnectionState::Connected).await;

    // Nothing of the partial history came; live messages go on.
    publish(&server.handle, "short.trimmed", "after");
    let after = next_message(&mut sub).await;
    assert_eq!((body(&after).as_str(), offset(&after)), ("after", 14));
    assert_eq!(sub.gaps(), 1);
    // What an application does on a gap: reload what is kept.
    let kept = client
        .history("short.trimmed", HistoryQuery::Recent(5))
        .await
        .unwrap();
    assert_eq!(
        bodies(&kept.messages),
        ["m10", "m11", "m12", "m13", "after"]
    );
}

#[tokio::test]
async fn after_a_restart_of_a_memory_store_the_gap_names_the_new_epoch_and_new_messages_arrive() {
    let first = start_with(history_config()).await;
    let addr = first.addr;
    let client = Client::builder(first.url())
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let mut sub = client.subscribe(["feed.restart"]).await.unwrap();
    for i in 1..=3 {
        publish(&first.handle, "feed.restart", &format!("m{i}"));
    }
    let mut before = None;
    for _ in 1..=3 {
        before = Position::of(&next_message(&mut sub).await);
    }
    let before = before.unwrap();
    assert_eq!(before.offset, 3);

    first.stop().await;
    let second = start_on_with(addr, history_config()).await;
    let gap = match next_event(&mut sub).await {
        Event::Gap(gap) => gap,
        other => panic!("expected a gap, got {other:?}"),
    };
    assert_eq!(gap.channel, "feed.restart");
    assert_eq!(gap.last, before);
    let new_epoch = gap.epoch.clone().expect("the channel keeps history");
    assert_ne!(new_epoch, before.epoch);
    assert_eq!(gap.offset, 0);

    // Offset 1 of the new epoch is new, although it is below the last offset of the old one.
    publish(&second.handle, "feed.restart", "new");
    let new = next_message(&mut sub).await;
    assert_eq!(body(&new), "new");
    assert_eq!(
        Position::of(&new),
        Some(Position {
            epoch: new_epoch,
            offset: 1
        })
    );
}

#[tokio::test]
async fn subscribe_recent_sends_the_last_messages_kept_then_live_ones() {
    let server = start_with(history_config()).await;
    for i in 1..=8 {
        publish(&server.handle, "feed.recent", &format!("m{i}"));
    }
    let client = Client::connect(&server.url()).await.unwrap();
    let mut plain = client.subscribe(["feed.recent"]).await.unwrap();
    publish(&server.handle, "feed.recent", "m9");
    assert_eq!(body(&next_message(&mut plain).await), "m9");

    // A second subscription of the same channel gets the recent messages; the first, which
    // already has them, gets none of them again.
    let mut recent = client.subscribe_recent("feed.recent", 3).await.unwrap();
    publish(&server.handle, "feed.recent", "m10");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_message(&mut recent).await);
    }
    assert_eq!(bodies(&got), ["m7", "m8", "m9", "m10"]);
    assert_eq!(got.iter().map(offset).collect::<Vec<_>>(), [7, 8, 9, 10]);
    assert_eq!(body(&next_message(&mut plain).await), "m10");
    client.publish("feed.recent", "m11").await.unwrap();
    assert_eq!(body(&next_message(&mut plain).await), "m11");
    assert_eq!(body(&next_message(&mut recent).await), "m11");

    // A channel that keeps no history: nothing first, live messages as usual.
    let mut none = client.subscribe_recent("no-history", 50).await.unwrap();
    publish(&server.handle, "no-history", "live");
    assert_eq!(body(&next_message(&mut none).await), "live");
}

#[tokio::test]
async fn history_reads_what_is_kept_without_subscribing() {
    let server = start_with(history_config()).await;
    let client = Client::connect(&server.url()).await.unwrap();
    let mut live = client.subscribe(["feed.read"]).await.unwrap();
    for i in 1..=6 {
        publish(&server.handle, "feed.read", &format!("m{i}"));
    }
    for i in 1..=2 {
        publish(&server.handle, "feed.other", &format!("o{i}"));
    }
    let mut epoch = String::new();
    for _ in 1..=6 {
        epoch = Position::of(&next_message(&mut live).await).unwrap().epoch;
    }

    let recent = client
        .history("feed.read", HistoryQuery::Recent(4))
        .await
        .unwrap();
    assert_eq!(bodies(&recent.messages), ["m3", "m4", "m5", "m6"]);
    assert_eq!(
        recent.messages.iter().map(offset).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    assert_eq!(recent.channel, "feed.read");
    assert_eq!(recent.epoch.as_deref(), Some(epoch.as_str()));
    assert_eq!(recent.offset, 6);
    assert_eq!(recent.recovered, None);

    let since = Position {
        epoch: epoch.clone(),
        offset: 4,
    };
    let after = client
        .history("feed.read", HistoryQuery::Since(since))
        .await
        .unwrap();
    assert_eq!(bodies(&after.messages), ["m5", "m6"]);
    assert_eq!(after.recovered, Some(true));

    let elsewhere = Position {
        epoch: "0000000000000000".into(),
        offset: 4,
    };
    let lost = client
        .history("feed.read", HistoryQuery::Since(elsewhere))
        .await
        .unwrap();
    assert!(lost.messages.is_empty());
    assert_eq!(lost.recovered, Some(false));

    // Two reads at once get their own messages.
    let (a, b) = tokio::join!(
        client.history("feed.read", HistoryQuery::Recent(2)),
        client.history("feed.other", HistoryQuery::Recent(5)),
    );
    assert_eq!(bodies(&a.unwrap().messages), ["m5", "m6"]);
    assert_eq!(bodies(&b.unwrap().messages), ["o1", "o2"]);

    let none = client
        .history("no-history", HistoryQuery::Recent(10))
        .await
        .unwrap();
    assert!(none.messages.is_empty());
    assert_eq!((none.epoch, none.offset), (None, 0));

    // The messages read went to the reads only: the subscription saw each message once.
    publish(&server.handle, "feed.read", "m7");
    assert_eq!(body(&next_message(&mut live).await), "m7");
}

#[tokio::test]
async fn messages_the_server_sends_again_are_not_delivered_twice() {
    let server = start_with(history_config()).await;
    let client = Client::connect(&server.url()).await.unwrap();
    let mut sub = client.subscribe(["feed.again"]).await.unwrap();
    for i in 1..=4 {
        client.publish("feed.again", format!("m{i}")).await.unwrap();
    }
    let mut epoch = String::new();
    for _ in 1..=4 {
        epoch = Position::of(&next_message(&mut sub).await).unwrap().epoch;
    }
    // A catch-up on a channel already subscribed sends its messages again (docs/protocol.md).
    let again = Message::builder("subscribe")
        .header("subscribe", "feed.again")
        .header("since", "1")
        .header("epoch", epoch)
        .build()
        .unwrap();
    let answer = client.request(again).await.unwrap();
    assert_eq!(answer.command(), "subscribed");
    assert_eq!(answer.header("count"), Some("3"));
    client.publish("feed.again", "m5").await.unwrap();
    assert_eq!(body(&next_message(&mut sub).await), "m5");
}

#[tokio::test]
async fn a_silent_network_path_is_found_by_ping_and_replaced_and_nothing_is_missed() {
    let server = everywhere(false, keep_history).await;
    for (url, target) in [
        (&server.wss, wss_addr(&server.wss)),
        (&server.tcp, tcp_addr(&server.tcp)),
    ] {
        let relay = Relay::start(target).await;
        let client = through(&relay, url, |u| server.builder(u))
            .ping_interval(Some(Duration::from_millis(200)))
            .ping_timeout(Duration::from_millis(300))
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        let channel = format!("feed.silent-{}", &url[..3]);
        let mut sub = client.subscribe([channel.as_str()]).await.unwrap();
        publish(&server.handle, &channel, "before");
        assert_eq!(body(&next_message(&mut sub).await), "before");

        let mut states = client.state_changes();
        let started = Instant::now();
        relay.silence();
        publish(&server.handle, &channel, "while silent");
        wait_state(&mut states, ConnectionState::Disconnected).await;
        let elapsed = started.elapsed();
        // At least the ping's timeout; at most the silence before the ping, its timeout and
        // slack for a loaded machine.
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(2_000),
            "{url}: detected after {elapsed:?}"
        );

        wait_state(&mut states, ConnectionState::Connected).await;
        assert_eq!(relay.accepted(), 2, "{url}");
        publish(&server.handle, &channel, "after");
        assert_eq!(body(&next_message(&mut sub).await), "while silent", "{url}");
        assert_eq!(body(&next_message(&mut sub).await), "after", "{url}");
        client.close().await;
    }
}
