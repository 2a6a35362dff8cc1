//! `lhttp --token` against an in-process server that refuses anonymous clients.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lhttp_server::{Config, Server};

const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";

fn token(ttl: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "cli", "exp": now + ttl}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn the_token_flag_authenticates_and_a_refused_token_says_why() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let mut config = Config::default();
    config.auth.anonymous = false;
    config.auth.hs256_secret = Some(SECRET.into());
    config.auth.leeway_secs = 0;
    let server = Server::builder(config).build().unwrap();
    let _task = tokio::spawn(async move { server.run(listener, std::future::pending()).await });

    let good = token(60);
    let ok = run(
        lhttp(&["--url", &url, "--token", &good, "pub", "room", "hi"]),
        b"",
    )
    .await;
    assert_eq!(ok.code, Some(0), "{ok:?}");

    // From the environment too, as scripts would pass it.
    let mut with_env = lhttp(&["--url", &url, "pub", "room", "hi"]);
    with_env.env("LHTTP_TOKEN", &good);
    let ok = run(with_env, b"").await;
    assert_eq!(ok.code, Some(0), "{ok:?}");

    let anonymous = run(lhttp(&["--url", &url, "pub", "room", "hi"]), b"").await;
    assert_eq!(anonymous.code, Some(1), "{anonymous:?}");
    assert!(anonymous.stderr.contains("401"), "{}", anonymous.stderr);

    let expired = token(-60);
    let refused = run(
        lhttp(&["--url", &url, "--token", &expired, "pub", "room", "hi"]),
        b"",
    )
    .await;
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused.stderr.contains("HTTP 401: token expired"),
        "{}",
        refused.stderr
    );
}
