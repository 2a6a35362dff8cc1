//! Presence on a single node, over real WebSocket connections: who is in a room, with the
//! user of their token and the info they chose, join and leave messages, and what presence
//! refuses (no presence, no right, too long an info, a full server, settings that cannot work).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Client, TestServer, body, config, start_with};
use jsonwebtoken::{EncodingKey, Header, encode};
use lhttp_server::{ChannelOptions, ChannelRule, Config, Server, proto::Message};
use serde_json::{Value, json};

const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";

/// A server whose channels `room.*` have presence (and join/leave messages when `join_leave`).
async fn server_with_presence(join_leave: bool, change: impl FnOnce(&mut Config)) -> TestServer {
    let config = config(|c| {
        c.channels.push(ChannelOptions {
            pattern: "room.*".into(),
            presence: true,
            join_leave,
            ..ChannelOptions::default()
        });
        change(c);
    });
    start_with(Server::builder(config)).await
}

/// Asks who is in `channel`; returns the answer and its members.
async fn presence(client: &mut Client, channel: &str, limit: Option<usize>) -> (Message, Value) {
    let limit = limit.map_or(String::new(), |l| format!("limit:{l}\r\n"));
    let (answer, _) = client
        .request(&format!(
            "LHTTP/1.0 presence\r\nchannel:{channel}\r\n{limit}\r\n"
        ))
        .await;
    assert_eq!(answer.command(), "presence", "{answer:?}");
    assert_eq!(answer.header("channel"), Some(channel));
    let members: Value = serde_json::from_slice(answer.body()).expect("a JSON body");
    (answer, members)
}

fn count(answer: &Message) -> usize {
    answer.header("count").unwrap().parse().unwrap()
}

/// The asking connection's own client id, from the answer to a presence query.
async fn client_id(client: &mut Client, channel: &str) -> String {
    let (answer, _) = presence(client, channel, Some(0)).await;
    answer.header("client").unwrap().to_owned()
}

/// Subscribes to `channel` with `info`; returns what arrived before the confirmation.
async fn join(client: &mut Client, channel: &str, info: &str) -> Vec<Message> {
    let (answer, others) = client
        .request(&format!(
            "LHTTP/1.0 sub\r\nsubscribe:{channel}\r\npresence-info:{info}\r\n\r\n"
        ))
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    others
}

fn infos(members: &Value) -> Vec<String> {
    let mut infos: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["info"].as_str().unwrap().to_owned())
        .collect();
    infos.sort();
    infos
}

#[tokio::test]
async fn members_are_listed_with_their_info_until_they_unsubscribe_or_disconnect() {
    let server = server_with_presence(false, |_| {}).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let mut carol = server.client().await;
    join(&mut alice, "room.a", "Alice").await;
    join(&mut bob, "room.a", "Bob the builder").await;
    // A wildcard subscriber follows the room without being one of its members.
    carol.subscribe("room.*").await;

    let (answer, members) = presence(&mut carol, "room.a", None).await;
    assert_eq!(count(&answer), 2);
    assert_eq!(answer.header("listed"), Some("2"));
    assert_eq!(infos(&members), ["Alice", "Bob the builder"]);
    let carol_id = answer.header("client").unwrap().to_owned();
    let alice_id = client_id(&mut alice, "room.a").await;
    assert_eq!(alice_id.len(), 16, "{alice_id}");
    assert_ne!(alice_id, carol_id);
    let ids: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&alice_id.as_str()), "{members}");
    assert!(!ids.contains(&carol_id.as_str()), "{members}");
    assert_eq!(server.metric("presence_members"), 2);

    // Subscribing again changes nothing; unsubscribing leaves.
    join(&mut bob, "room.a", "Bob again").await;
    assert_eq!(count(&presence(&mut carol, "room.a", None).await.0), 2);
    bob.request("LHTTP/1.0 sub\r\nunsubscribe:room.a\r\n\r\n")
        .await;
    let (answer, members) = presence(&mut carol, "room.a", None).await;
    assert_eq!((count(&answer), infos(&members)), (1, vec!["Alice".into()]));

    alice.close().await;
    server.wait_connections(2).await;
    let (answer, members) = presence(&mut carol, "room.a", None).await;
    assert_eq!((count(&answer), members), (0, json!([])));
    assert_eq!(server.metric("presence_members"), 0);
}

#[tokio::test]
async fn subscribers_see_joins_and_leaves_but_no_history_offset() {
    let server = server_with_presence(true, |c| {
        c.history.store = "memory".into();
        c.channels[0].history_size = 10;
    })
    .await;
    let mut watcher = server.client().await;
    watcher.subscribe("room.*").await;
    let mut alice = server.client().await;
    let seen = join(&mut alice, "room.a", "Alice").await;
    let alice_id = client_id(&mut alice, "room.a").await;
    // A member sees its own join, queued before the subscribe's confirmation.
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].command(), "join");

    let joined = watcher.recv().await;
    assert_eq!(joined.command(), "join", "{joined:?}");
    assert_eq!(joined.header("publish"), Some("room.a"));
    assert_eq!(joined.header("client"), Some(alice_id.as_str()));
    assert_eq!(joined.header("user"), Some(""));
    assert_eq!(joined.header("offset"), None);
    assert_eq!(body(&joined), "Alice");

    // A chat message keeps its offset: the first one, joins are not kept.
    alice.publish("chat", "room.a", "hello").await;
    let hello = watcher.recv().await;
    assert_eq!(
        (hello.header("offset"), body(&hello).as_str()),
        (Some("1"), "hello")
    );

    alice.close().await;
    let left = watcher.recv().await;
    assert_eq!(left.command(), "leave", "{left:?}");
    assert_eq!(left.header("client"), Some(alice_id.as_str()));
    assert_eq!(body(&left), "Alice");
}

#[tokio::test]
async fn members_carry_the_user_of_their_token() {
    let server = server_with_presence(false, |c| {
        c.auth.hs256_secret = Some(SECRET.into());
    })
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = encode(
        &Header::default(),
        &json!({"sub": "alice", "exp": now + 60}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut alice = server.client().await;
    let (answer, _) = alice
        .request(&format!("LHTTP/1.0 auth\r\ntoken:{token}\r\n\r\n"))
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    join(&mut alice, "room.a", "").await;
    let mut guest = server.client().await;
    join(&mut guest, "room.a", "").await;
    let (_, members) = presence(&mut guest, "room.a", None).await;
    let mut users: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["", "alice"]);
}

#[tokio::test]
async fn lists_are_capped_and_a_count_alone_can_be_asked() {
    let server = server_with_presence(false, |c| c.limits.max_presence_list = 3).await;
    let mut members = Vec::new();
    for i in 0..5 {
        let mut m = server.client().await;
        join(&mut m, "room.big", &format!("m{i}")).await;
        members.push(m);
    }
    let mut asker = server.client().await;
    let (answer, list) = presence(&mut asker, "room.big", None).await;
    assert_eq!((count(&answer), answer.header("listed")), (5, Some("3")));
    assert_eq!(list.as_array().unwrap().len(), 3);
    let (answer, list) = presence(&mut asker, "room.big", Some(100)).await;
    assert_eq!(answer.header("listed"), Some("3"));
    assert_eq!(list.as_array().unwrap().len(), 3);
    let (answer, list) = presence(&mut asker, "room.big", Some(0)).await;
    assert_eq!((count(&answer), list), (5, json!([])));
}

#[tokio::test]
async fn presence_refuses_what_it_must() {
    let server = server_with_presence(false, |c| {
        c.limits.max_presence_info = 8;
        c.limits.max_presence_members = 2;
        for channels in ["room.public", "room.more", "other"] {
            c.auth.rules.push(ChannelRule {
                channels: channels.into(),
                subscribe: true,
                publish: true,
                anonymous: true,
                ..ChannelRule::default()
            });
        }
    })
    .await;
    let mut guest = server.client().await;
    for (text, status) in [
        ("LHTTP/1.0 presence\r\n\r\n", 400),
        (
            "LHTTP/1.0 presence\r\nchannel:room.public\r\nlimit:x\r\n\r\n",
            400,
        ),
        ("LHTTP/1.0 presence\r\nchannel:room.secret\r\n\r\n", 403),
        ("LHTTP/1.0 presence\r\nchannel:other\r\n\r\n", 404),
        (
            "LHTTP/1.0 sub\r\nsubscribe:room.public\r\npresence-info:123456789\r\n\r\n",
            413,
        ),
    ] {
        guest.send(text).await;
        let (got, reason, _) = guest.recv_error().await;
        assert_eq!(got, status, "{text:?}: {reason}");
    }
    // The refused subscribe subscribed nothing.
    assert_eq!(server.handle.hub().subscriber_count("room.public"), 0);

    // Two members fill the server; a third presence subscribe is refused, a plain one is not.
    join(&mut guest, "room.public", "12345678").await;
    let mut other = server.client().await;
    join(&mut other, "room.public", "").await;
    let mut third = server.client().await;
    third
        .send("LHTTP/1.0 sub\r\nsubscribe:room.more\r\n\r\n")
        .await;
    let (status, reason, _) = third.recv_error().await;
    assert_eq!(status, 503, "{reason}");
    assert_eq!(server.handle.hub().subscriber_count("room.more"), 0);
    third.subscribe("other").await;
    let (answer, members) = presence(&mut third, "room.public", None).await;
    assert_eq!(count(&answer), 2);
    assert_eq!(infos(&members), ["", "12345678"]);
}

#[tokio::test]
async fn presence_settings_that_cannot_work_are_refused_at_start() {
    let refused = |change: &dyn Fn(&mut Config), what: &str| {
        let c = config(|c| {
            c.channels.push(ChannelOptions {
                pattern: "room.*".into(),
                presence: true,
                ..ChannelOptions::default()
            });
            change(c);
        });
        let error = match Server::builder(c).build() {
            Ok(_) => panic!("started: {what}"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(what), "{error}");
    };
    refused(
        &|c| {
            c.channels[0].presence = false;
            c.channels[0].join_leave = true;
        },
        "join_leave needs presence",
    );
    refused(
        &|c| {
            c.cluster.nats = vec!["nats://127.0.0.1:4222".into()];
            c.cluster.presence_timeout_ms = 1500;
        },
        "presence_timeout_ms",
    );
    refused(
        &|c| c.limits.max_presence_members = usize::MAX,
        "max_presence_members",
    );
}
