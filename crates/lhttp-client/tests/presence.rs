//! `Client::presence` against a real in-process server: the members of a channel with
//! presence, the caller's own id, counts alone, and the refusal of a channel without it.

mod common;

use common::{start_with, test_config};
use lhttp_client::{Client, Error, Message};
use lhttp_server::config::ChannelOptions;

#[tokio::test]
async fn presence_lists_the_members_and_finds_the_caller() {
    let mut config = test_config();
    config.channels.push(ChannelOptions {
        pattern: "room.*".into(),
        presence: true,
        ..ChannelOptions::default()
    });
    let server = start_with(config).await;
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
