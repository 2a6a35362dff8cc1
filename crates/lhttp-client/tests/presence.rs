//! `Client::presence` against a real in-process server: the members of a channel with
//! presence, the caller's own id, counts alone, and the refusal of a channel without it.

mod common;

use common::{start_with, test_config};
use lhttp_client::{Client, Error, Message};
use lhttp_server::config::ChannelOptions;

/// A server whose channels `room.*` have presence.
fn presence_config() -> lhttp_server::Config {
    let mut config = test_config();
    config.channels.push(ChannelOptions {
        pattern: "room.*".into(),
        presence: true,
        ..ChannelOptions::default()
    });
    config
}

#[tokio::test]
async fn presence_lists_the_members_and_finds_the_caller() {
    let server = start_with(presence_config()).await;
    let alice = Client::connect(&server.url()).await.unwrap();
    let join = Message::builder("sub")
        .header("subscribe", "room.a")
        .header("presence-info", "Alice")
        .build()
        .unwrap();
    alice.request(join).await.unwrap();
    let _bob = {
        let bob = Client::connect(&server.url()).await.unwrap();
        let _subscription = bob.subscribe(["room.a"]).await.unwrap();
        (bob, _subscription)
    };

    let room = alice.presence("room.a", None).await.unwrap();
    assert_eq!(room.channel, "room.a");
    assert_eq!(room.count, 2);
    let mut infos: Vec<&str> = room.members.iter().map(|m| m.info.as_str()).collect();
    infos.sort();
    assert_eq!(infos, ["", "Alice"]);
    let me = room.members.iter().find(|m| m.client == room.you).unwrap();
    assert_eq!(me.info, "Alice");

    let counted = alice.presence("room.a", Some(0)).await.unwrap();
    assert_eq!((counted.count, counted.members.len()), (2, 0));
    match alice.presence("plain", None).await {
        Err(Error::Server { status: 404, .. }) => {}
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn the_presence_info_a_subscription_sets_is_listed_and_comes_back_after_a_reconnect() {
    use common::relay::Relay;
    use lhttp_client::{ConnectionState, SubscribeOptions};
    use std::time::Duration;
    let server = start_with(presence_config()).await;
    let relay = Relay::start(server.addr).await;
    let ann = Client::builder(relay.ws_url())
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let options = SubscribeOptions {
        presence_info: Some("Ann".into()),
        ..SubscribeOptions::default()
    };
    let _room = ann.subscribe_with(["room.b"], options).await.unwrap();
    let watcher = Client::connect(&server.url()).await.unwrap();
    let infos =
        |room: lhttp_client::Presence| room.members.into_iter().map(|m| m.info).collect::<Vec<_>>();
    assert_eq!(
        infos(watcher.presence("room.b", None).await.unwrap()),
        ["Ann"]
    );

    // The connection is lost (Ann leaves the room) and comes back: the subscription is
    // restored with its info.
    let mut states = ann.state_changes();
    relay.refuse(true);
    relay.cut();
    let down = states.wait_for(|s| *s == ConnectionState::Disconnected);
    tokio::time::timeout(Duration::from_secs(5), down)
        .await
        .expect("disconnected in time")
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while watcher.presence("room.b", None).await.unwrap().count != 0 {
        assert!(tokio::time::Instant::now() < deadline, "Ann never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.refuse(false);
    let mut states = ann.state_changes();
    let reached = states.wait_for(|s| *s == ConnectionState::Connected);
    tokio::time::timeout(Duration::from_secs(5), reached)
        .await
        .expect("reconnected in time")
        .unwrap();
    assert_eq!(
        infos(watcher.presence("room.b", None).await.unwrap()),
        ["Ann"]
    );
}
