//! Channel permissions over real sockets: `[[auth.rules]]` for everyone, for the owner
//! (`{sub}`) and for a role; all-or-nothing lists; nothing reaches a refused subscriber; token
//! claims that extend or narrow; `POST /publish` as the admin path; and no rules = open.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lhttp_server::{ChannelRule, Config, Server};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";

fn token(claims: Value) -> String {
    let mut claims = claims;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    claims["exp"] = json!(exp);
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn rule(channels: &str, subscribe: bool, publish: bool) -> ChannelRule {
    ChannelRule {
        channels: channels.into(),
        subscribe,
        publish,
        ..ChannelRule::default()
    }
}

/// The rules of docs/security.md's example: `public.*` for everyone, `user.{sub}.>` for its
/// owner, `admin.>` for role `admin`, and `news` readable by authenticated users only.
async fn server() -> TestServer {
    let mut config = Config::default();
    config.auth.hs256_secret = Some(SECRET.into());
    config.auth.rules = vec![
        ChannelRule {
            anonymous: true,
            ..rule("public.*", true, true)
        },
        rule("user.{sub}.>", true, true),
        ChannelRule {
            roles: vec!["admin".into()],
            ..rule("admin.>", true, true)
        },
        rule("news", true, false),
    ];
    start_with(Server::builder(config)).await
}

async fn as_user(server: &TestServer, claims: Value) -> Client {
    let url = format!("{}?token={}", server.url("/"), token(claims));
    let (ws, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
        .await
        .expect("connects");
    Client { ws, next_id: 0 }
}

/// Sends `text` with a request-id and returns (status, reason) of the error it gets.
async fn refused(client: &mut Client, text: &str) -> (u16, String) {
    let (answer, _) = client.request(text).await;
    assert_eq!(answer.command(), "error", "{answer:?}");
    assert!(answer.header("request-id").is_some(), "request-id copied");
    (
        answer.header("status").unwrap().parse().unwrap(),
        answer.header("reason").unwrap().to_owned(),
    )
}

#[tokio::test]
async fn public_channels_are_open_and_everything_else_is_refused_to_anonymous() {
    let server = server().await;
    let mut anonymous = server.client().await;
    anonymous.subscribe("public.lobby").await;
    anonymous.publish("chat", "public.lobby", "hello").await;
    for text in [
        "LHTTP/1.0 sub\r\nsubscribe:user.alice.inbox\r\n\r\n",
        "LHTTP/1.0 sub\r\nsubscribe:news\r\n\r\n",
        "LHTTP/1.0 chat\r\npublish:private\r\n\r\nx",
        // `public.*` is one token only.
        "LHTTP/1.0 sub\r\nsubscribe:public.a.b\r\n\r\n",
    ] {
        let (status, reason) = refused(&mut anonymous, text).await;
        assert_eq!(status, 403, "{text}");
        assert!(reason.starts_with("not allowed to"), "{reason}");
    }
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("lhttp_permission_denials_total 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn user_channels_belong_to_their_owner() {
    let server = server().await;
    let mut alice = as_user(&server, json!({"sub": "alice"})).await;
    let mut bob = as_user(&server, json!({"sub": "bob"})).await;
    alice.subscribe("user.alice.inbox").await;
    alice.subscribe("news").await;

    let (status, reason) = refused(
        &mut bob,
        "LHTTP/1.0 sub\r\nsubscribe:user.alice.inbox\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (403, "not allowed to subscribe to channel user.alice.inbox")
    );
    let (status, _) = refused(
        &mut bob,
        "LHTTP/1.0 dm\r\npublish:user.alice.inbox\r\n\r\nspam",
    )
    .await;
    assert_eq!(status, 403);
    // Authenticated users may read `news` but not write it.
    let (status, _) = refused(&mut bob, "LHTTP/1.0 chat\r\npublish:news\r\n\r\nfake").await;
    assert_eq!(status, 403);
    alice.expect_silence(200).await;

    // Alice writes to her own channels.
    bob.subscribe("user.bob.inbox").await;
    let delivered = alice.publish("note", "user.alice.inbox", "to self").await;
    assert_eq!(body(&delivered[0]), "to self");
}

#[tokio::test]
async fn admin_channels_need_the_role() {
    let server = server().await;
    let mut admin = as_user(&server, json!({"sub": "root", "roles": ["ops", "admin"]})).await;
    let mut carol = as_user(&server, json!({"sub": "carol", "roles": ["ops"]})).await;
    admin.subscribe("admin.audit.logins").await;
    let (status, _) = refused(
        &mut carol,
        "LHTTP/1.0 sub\r\nsubscribe:admin.audit.logins\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = refused(
        &mut carol,
        "LHTTP/1.0 x\r\npublish:admin.audit.logins\r\n\r\nforged",
    )
    .await;
    assert_eq!(status, 403);
    admin.expect_silence(200).await;

    // POST /publish (loopback here, or with the API key) is the admin path: no channel rules.
    let (status, answer) = server
        .post(
            "/publish",
            "LHTTP/1.0 audit\r\npublish:admin.audit.logins\r\n\r\nlogin root",
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(body(&admin.recv().await), "login root");
}

#[tokio::test]
async fn a_subscribe_list_is_all_or_nothing_and_a_refused_subscriber_gets_nothing() {
    let server = server().await;
    let mut alice = as_user(&server, json!({"sub": "alice"})).await;
    let (status, reason) = refused(
        &mut alice,
        "LHTTP/1.0 sub\r\nsubscribe:public.a user.alice.x user.bob.x\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (403, "not allowed to subscribe to channel user.bob.x")
    );
    assert_eq!(server.handle.hub().subscription_count(), 0);

    // Messages to all three channels: none reaches alice.
    let mut publisher = server.client().await;
    publisher.publish("chat", "public.a", "1").await;
    for channel in ["user.alice.x", "user.bob.x"] {
        let (status, _) = server
            .post(
                "/publish",
                format!("LHTTP/1.0 chat\r\npublish:{channel}\r\n\r\n2"),
            )
            .await;
        assert_eq!(status, 200);
    }
    alice.expect_silence(300).await;
}

#[tokio::test]
async fn a_publish_list_with_one_forbidden_channel_is_refused_whole() {
    let server = server().await;
    let mut listener = server.client().await;
    listener.subscribe("public.a").await;
    let mut alice = as_user(&server, json!({"sub": "alice"})).await;
    // The subscribe in the same message does not happen either.
    let (status, _) = refused(
        &mut alice,
        "LHTTP/1.0 chat\r\nsubscribe:public.b\r\npublish:public.a user.bob.inbox\r\n\r\nleak?",
    )
    .await;
    assert_eq!(status, 403);
    listener.expect_silence(300).await;
    assert_eq!(server.handle.hub().subscriber_count("public.b"), 0);
}

#[tokio::test]
async fn token_claims_extend_or_narrow_what_the_rules_allow() {
    let server = server().await;
    let mut vip = as_user(
        &server,
        json!({"sub": "vip", "channels": {"subscribe": ["lounge.*"], "publish": ["lounge.{sub}"]}}),
    )
    .await;
    vip.subscribe("lounge.main public.a user.vip.inbox").await;
    vip.publish("chat", "lounge.vip", "mine").await;
    let (status, _) = refused(&mut vip, "LHTTP/1.0 chat\r\npublish:lounge.main\r\n\r\nx").await;
    assert_eq!(status, 403);

    let mut guest = as_user(
        &server,
        json!({"sub": "guest", "channels": {"subscribe": ["room.42"], "publish": ["room.42"], "only": true}}),
    )
    .await;
    guest.subscribe("room.42").await;
    // `only`: the rules no longer apply to this connection, not even `public.*` or its own.
    for channel in ["public.a", "user.guest.inbox"] {
        let (status, _) = refused(
            &mut guest,
            &format!("LHTTP/1.0 sub\r\nsubscribe:{channel}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 403, "{channel}");
    }
}

#[tokio::test]
async fn without_rules_every_channel_is_open() {
    let mut config = Config::default();
    config.auth.hs256_secret = Some(SECRET.into());
    let server = start_with(Server::builder(config)).await;
    let mut anonymous = server.client().await;
    anonymous
        .subscribe("user.alice.inbox admin.x anything")
        .await;
    let mut alice = as_user(&server, json!({"sub": "alice"})).await;
    alice.publish("chat", "admin.x", "hi").await;
    assert_eq!(body(&anonymous.recv().await), "hi");
    // A token may still narrow its own connection.
    let mut narrow = as_user(
        &server,
        json!({"sub": "n", "channels": {"subscribe": ["a"], "only": true}}),
    )
    .await;
    let (status, _) = refused(&mut narrow, "LHTTP/1.0 sub\r\nsubscribe:b\r\n\r\n").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn authenticating_drops_subscriptions_the_user_may_not_hold() {
    // `only` narrows: a connection that subscribed anonymously keeps only what its token allows.
    let server = server().await;
    let mut c = server.client().await;
    c.subscribe("public.a public.b").await;
    let (answer, _) = c
        .request(&format!(
            "LHTTP/1.0 auth\r\ntoken:{}\r\n\r\n",
            token(json!({"sub": "z", "channels": {"subscribe": ["public.a"], "only": true}}))
        ))
        .await;
    assert_eq!(answer.command(), "ok");
    assert_eq!(server.handle.hub().subscriber_count("public.a"), 1);
    assert_eq!(server.handle.hub().subscriber_count("public.b"), 0);
}

#[tokio::test]
async fn a_token_refresh_that_narrows_the_channels_ends_group_memberships_and_says_so() {
    let server = server().await;
    let admin = json!({"sub": "ops", "roles": ["admin"]});
    let mut worker = as_user(&server, admin.clone()).await;
    let (ok, _) = worker
        .request("LHTTP/1.0 sub\r\nsubscribe:admin.jobs\r\nqueue:workers\r\n\r\n")
        .await;
    assert_eq!(ok.command(), "ok", "{ok:?}");
    worker.subscribe("admin.news").await;
    assert_eq!(server.handle.queue_member_count(), 1);

    // The same user, no longer an admin.
    let (answer, notices) = worker
        .request(&format!(
            "LHTTP/1.0 auth\r\ntoken:{}\r\n\r\n",
            token(json!({"sub": "ops"}))
        ))
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    let mut ended: Vec<(String, Option<String>)> = notices
        .iter()
        .map(|n| {
            assert_eq!(n.command(), "unsubscribed", "{n:?}");
            assert!(n.header("reason").is_some());
            (
                n.header("channel").unwrap().to_owned(),
                n.header("queue").map(str::to_owned),
            )
        })
        .collect();
    ended.sort();
    assert_eq!(
        ended,
        [
            ("admin.jobs".to_owned(), Some("workers".to_owned())),
            ("admin.news".to_owned(), None)
        ]
    );
    assert_eq!(server.handle.queue_member_count(), 0);

    let mut boss = as_user(&server, admin).await;
    boss.publish("job", "admin.jobs admin.news", "secret work")
        .await;
    worker.expect_silence(300).await;
}

#[tokio::test]
async fn where_rules_apply_a_plain_message_to_an_inbox_needs_a_rule_but_answers_do_not() {
    for inbox_rule in [false, true] {
        let mut config = Config::default();
        config.auth.hs256_secret = Some(SECRET.into());
        config.auth.rules = vec![ChannelRule {
            anonymous: true,
            ..rule("public.*", true, true)
        }];
        if inbox_rule {
            config.auth.rules.push(rule("_inbox.>", false, true));
        }
        let server = start_with(Server::builder(config)).await;
        let mut alice = as_user(&server, json!({"sub": "alice"})).await;
        let mut bob = as_user(&server, json!({"sub": "bob"})).await;
        let (answer, _) = alice.request("LHTTP/1.0 inbox\r\n\r\n").await;
        let inbox = answer.header("inbox").unwrap().to_owned();

        let note = format!("LHTTP/1.0 note\r\npublish:{inbox}\r\n\r\nhi alice");
        if inbox_rule {
            bob.publish("note", &inbox, "hi alice").await;
            assert_eq!(alice.recv().await.body().as_ref(), b"hi alice");
        } else {
            let (status, reason) = refused(&mut bob, &note).await;
            assert_eq!(status, 403, "{reason}");
            alice.expect_silence(200).await;
        }

        // Answers need no rule: the reply address is the right to answer.
        bob.subscribe("public.svc").await;
        alice
            .send("LHTTP/1.0 ask\r\npublish:public.svc\r\nreply-to:\r\nrequest-id:q\r\n\r\n?")
            .await;
        let request = bob.recv().await;
        let reply_to = request.header("reply-to").unwrap();
        bob.send(&format!("LHTTP/1.0 a\r\npublish:{reply_to}\r\n\r\n!"))
            .await;
        let reply = alice.recv().await;
        assert_eq!(reply.header("request-id"), Some("q"));
        assert_eq!(reply.body().as_ref(), b"!");
    }
}
