//! The `token` builder option against a real in-process server that refuses anonymous clients:
//! the token goes in the upgrade's Authorization header, and a refused one says why.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lhttp_client::{Client, Error};
use lhttp_server::{Config, Server};
use serde_json::json;

const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";

fn token(sub: &str, ttl: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": now + ttl}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn server() -> (String, tokio::task::JoinHandle<()>) {
    let mut config = Config::default();
    config.auth.anonymous = false;
    config.auth.hs256_secret = Some(SECRET.into());
    config.auth.leeway_secs = 0;
    let server = Server::builder(config).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        server.run(listener, std::future::pending()).await.unwrap();
    });
    (url, task)
}

#[tokio::test]
async fn a_client_the_server_disconnects_does_not_come_back() {
    let mut config = Config::default();
    config.auth.hs256_secret = Some(SECRET.into());
    let server = Server::builder(config).build().unwrap();
    let handle = server.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { server.run(listener, std::future::pending()).await });
    let alice = Client::builder(&url)
        .token(token("alice", 60))
        .connect()
        .await
        .unwrap();
    let _room = alice.subscribe(["room"]).await.unwrap();

    assert_eq!(handle.disconnect_user("alice"), 1);
    let mut states = alice.state_changes();
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while *states.borrow_and_update() != lhttp_client::ConnectionState::Closed {
            states.changed().await.unwrap();
        }
    })
    .await
    .expect("the client closes");
    // Long past the first reconnect delay: it stayed away.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(handle.connection_count(), 0);
    assert!(alice.publish("room", "anyone?").await.is_err());
}

#[tokio::test]
async fn a_client_with_a_token_subscribes_and_publishes() {
    let (url, _server) = server().await;
    let alice = Client::builder(&url)
        .token(token("alice", 60))
        .connect()
        .await
        .unwrap();
    let bob = Client::builder(&url)
        .token(token("bob", 60))
        .connect()
        .await
        .unwrap();
    let mut room = alice.subscribe(["room"]).await.unwrap();
    bob.publish("room", "hello").await.unwrap();
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), room.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&message.body()[..], b"hello");

    // Without a token the server accepts the socket but answers 401 until `auth`.
    let anonymous = Client::builder(&url)
        .reconnect(false)
        .connect()
        .await
        .unwrap();
    match anonymous.subscribe(["room"]).await {
        Err(Error::Server {
            status: 401,
            reason,
            ..
        }) => {
            assert!(reason.contains("authentication required"), "{reason}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_token_fails_the_connection_with_the_reason() {
    let (url, _server) = server().await;
    let result = Client::builder(&url)
        .reconnect(false)
        .token(token("alice", -60))
        .connect()
        .await;
    match result {
        Err(Error::Connect { reason, .. }) => assert_eq!(reason, "HTTP 401: token expired"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refresh_that_narrows_the_rights_ends_subscriptions_and_worker_streams() {
    let mut config = Config::default();
    config.auth.hs256_secret = Some(SECRET.into());
    config.auth.rules = vec![lhttp_server::ChannelRule {
        channels: "admin.>".into(),
        subscribe: true,
        publish: true,
        roles: vec!["admin".into()],
        ..Default::default()
    }];
    let server = Server::builder(config).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let _server = tokio::spawn(async move {
        server.run(listener, std::future::pending()).await.unwrap();
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = |roles: &[&str]| {
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "ops", "roles": roles, "exp": now + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let client = Client::builder(&url)
        .token(signed(&["admin"]))
        .connect()
        .await
        .unwrap();
    let mut news = client.subscribe(["admin.news"]).await.unwrap();
    let mut jobs = client.join_queue("admin.jobs", "workers", 1).await.unwrap();
    let mut incoming = client.incoming().await.unwrap();

    let auth = lhttp_server::proto::Message::builder("auth")
        .header("token", signed(&[]))
        .build()
        .unwrap();
    let answer = client.request(auth).await.unwrap();
    assert_eq!(answer.command(), "ok");
    let wait = std::time::Duration::from_secs(5);
    let mut ended = Vec::new();
    for _ in 0..2 {
        let notice = tokio::time::timeout(wait, incoming.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(notice.command(), "unsubscribed");
        ended.push((
            notice.header("channel").unwrap().to_owned(),
            notice.header("queue").map(str::to_owned),
        ));
    }
    ended.sort();
    assert_eq!(
        ended,
        [
            ("admin.jobs".to_owned(), Some("workers".to_owned())),
            ("admin.news".to_owned(), None)
        ]
    );
    // The worker's stream ends: no more work will come through it.
    let end = tokio::time::timeout(wait, jobs.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), news.next())
            .await
            .is_err()
    );
}
