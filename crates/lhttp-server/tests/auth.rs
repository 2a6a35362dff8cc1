//! Authentication over real sockets: tokens at the upgrade (header and query), the `auth`
//! message, refusals with their reasons, the authentication time limit, and token expiry with
//! refresh. Keys are the test-only fixtures in tests/fixtures/auth.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lhttp_server::{Config, Context, Processor, Rejection, Server, async_trait};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, ttl_secs: u64) -> Value {
    json!({"sub": sub, "exp": now() + ttl_secs})
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn rs256(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(fixture("rs256-private.pem").as_bytes()).unwrap();
    sign(Algorithm::RS256, claims, &key)
}

fn es256(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(fixture("es256-private.pem").as_bytes()).unwrap();
    sign(Algorithm::ES256, claims, &key)
}

fn sign(algorithm: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    encode(&Header::new(algorithm), claims, key).unwrap()
}

/// Answers `whoami` with the connection's user id (or `anonymous`), as an application
/// processor would use [`lhttp_server::Connection::user`].
struct WhoAmI;

#[async_trait]
impl Processor for WhoAmI {
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let who = ctx.connection().user().map_or("anonymous".to_owned(), |u| {
            format!("{} roles={}", u.id(), u.roles().join(","))
        });
        let reply = ctx.reply_builder().body(who).build().expect("reply");
        let _ = ctx.reply(&reply);
        Ok(())
    }
}

/// A server that accepts all three algorithms, with `change` applied.
async fn server(change: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::default();
    config.auth.hs256_secret = Some(SECRET.into());
    config.auth.rs256_public_key_file = Some(format!("{FIXTURES}/rs256-public.pem").into());
    config.auth.es256_public_key_env = Some("LHTTP_TEST_ES256_PUBLIC_KEY".into());
    config.auth.leeway_secs = 0;
    // SAFETY of set_var: every test in this file sets the same value, before building.
    unsafe { std::env::set_var("LHTTP_TEST_ES256_PUBLIC_KEY", fixture("es256-public.pem")) };
    change(&mut config);
    start_with(Server::builder(config).processor("whoami", WhoAmI)).await
}

/// Connects with `Authorization: Bearer <token>`.
async fn connect_bearer(url: &str, token: &str) -> Result<Client, (u16, String)> {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    connect(request).await
}

async fn connect(
    request: tungstenite::handshake::client::Request,
) -> Result<Client, (u16, String)> {
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client { ws, next_id: 0 }),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Err(other) => panic!("connect: {other}"),
    }
}

async fn whoami(client: &mut Client) -> String {
    let (answer, _) = client.request("LHTTP/1.0 whoami\r\n\r\n").await;
    assert_eq!(answer.command(), "whoami", "{answer:?}");
    body(&answer)
}

#[tokio::test]
async fn each_algorithm_and_each_way_of_presenting_a_token_authenticates() {
    let server = server(|c| c.auth.anonymous = false).await;
    let mut with_roles = claims("alice", 60);
    with_roles["roles"] = json!(["admin", "ops"]);

    let mut header = connect_bearer(&server.url("/"), &hs256(&with_roles))
        .await
        .unwrap();
    assert_eq!(whoami(&mut header).await, "alice roles=admin,ops");

    let url = format!(
        "{}?token={}",
        server.url("/chat"),
        rs256(&claims("bob", 60))
    );
    let mut query = connect(url.into_client_request().unwrap()).await.unwrap();
    assert_eq!(whoami(&mut query).await, "bob roles=");

    let mut message = server.client().await;
    let (answer, _) = message
        .request(&format!(
            "LHTTP/1.0 auth\r\ntoken:{}\r\n\r\n",
            es256(&claims("carol", 60))
        ))
        .await;
    assert_eq!(answer.command(), "ok");
    assert_eq!(answer.header("status"), Some("200"));
    assert_eq!(whoami(&mut message).await, "carol roles=");
}

#[tokio::test]
async fn bad_tokens_at_the_upgrade_get_401_with_the_reason() {
    let server = server(|_| {}).await;
    let url = server.url("/");
    let other_rsa =
        EncodingKey::from_rsa_pem(fixture("rs256-other-private.pem").as_bytes()).unwrap();
    let other_ec = EncodingKey::from_ec_pem(fixture("es256-other-private.pem").as_bytes()).unwrap();
    let expired = json!({"sub": "alice", "exp": now() - 10});
    let cases = [
        (hs256(&expired), "token expired"),
        (
            sign(Algorithm::RS256, &claims("a", 60), &other_rsa),
            "invalid token signature",
        ),
        (
            sign(Algorithm::ES256, &claims("a", 60), &other_ec),
            "invalid token signature",
        ),
        (
            sign(
                Algorithm::HS384,
                &claims("a", 60),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
            "token algorithm HS384 not accepted",
        ),
        ("garbage.not.jwt".to_owned(), "malformed token"),
        (
            hs256(&json!({"exp": now() + 60})),
            "token claim sub missing",
        ),
    ];
    for (token, reason) in cases {
        let (status, body) = connect_bearer(&url, &token).await.err().expect("refused");
        assert_eq!((status, body.trim()), (401, reason));
        // The same through the query parameter.
        let query = format!("{url}?x=1&token={token}");
        let (status, body) = connect(query.into_client_request().unwrap())
            .await
            .err()
            .expect("refused");
        assert_eq!((status, body.trim()), (401, reason));
    }
    // Anonymous connections are still welcome on this server.
    let mut anonymous = server.client().await;
    assert_eq!(whoami(&mut anonymous).await, "anonymous");
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("lhttp_auth_failures_total 12"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_configured_issuer_and_audience_must_be_in_the_token() {
    let server = server(|c| {
        c.auth.anonymous = false;
        c.auth.issuer = Some("https://issuer.example".into());
        c.auth.audience = Some("lhttp".into());
    })
    .await;
    let url = server.url("/");
    let token = |change: &dyn Fn(&mut Value)| {
        let mut c = json!({"sub": "alice", "exp": now() + 60,
            "iss": "https://issuer.example", "aud": "lhttp"});
        change(&mut c);
        hs256(&c)
    };
    let without = |claim: &'static str| {
        token(&move |c: &mut Value| {
            c.as_object_mut().unwrap().remove(claim);
        })
    };
    let refused = [
        (without("aud"), "token claim aud missing"),
        (without("iss"), "token claim iss missing"),
        (
            token(&|c| c["aud"] = json!("other")),
            "wrong token audience",
        ),
        (token(&|c| c["iss"] = json!("evil")), "wrong token issuer"),
        // An issuer list that merely includes ours is not our issuer.
        (
            token(&|c| c["iss"] = json!(["evil", "https://issuer.example"])),
            "wrong token issuer",
        ),
    ];
    for (token, reason) in &refused {
        let (status, body) = connect_bearer(&url, token).await.err().expect("refused");
        assert_eq!((status, body.trim()), (401, *reason));
    }
    // The same tokens through the `auth` message.
    let mut c = server.client().await;
    for (token, reason) in &refused {
        let (answer, _) = c
            .request(&format!("LHTTP/1.0 auth\r\ntoken:{token}\r\n\r\n"))
            .await;
        assert_eq!(
            (answer.header("status"), answer.header("reason")),
            (Some("401"), Some(*reason))
        );
    }
    // An audience list that includes ours is fine (RFC 7519, 4.1.3). On a new connection: five
    // refused `auth` messages close the one above (see tests/abuse.rs).
    let mut c = server.client().await;
    let good = token(&|c| c["aud"] = json!(["other", "lhttp"]));
    let (answer, _) = c
        .request(&format!("LHTTP/1.0 auth\r\ntoken:{good}\r\n\r\n"))
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    assert_eq!(whoami(&mut c).await, "alice roles=");
    let mut upgraded = connect_bearer(&url, &token(&|_| {}))
        .await
        .expect("accepted");
    assert_eq!(whoami(&mut upgraded).await, "alice roles=");
}

#[tokio::test]
async fn without_anonymous_only_auth_is_accepted_until_a_valid_token_arrives() {
    let server = server(|c| c.auth.anonymous = false).await;
    let mut c = server.client().await;
    let (answer, _) = c.request("LHTTP/1.0 sub\r\nsubscribe:room\r\n\r\n").await;
    assert_eq!(answer.command(), "error");
    assert_eq!(answer.header("status"), Some("401"));
    assert!(
        answer
            .header("reason")
            .unwrap()
            .contains("authentication required")
    );
    assert_eq!(server.handle.hub().subscriber_count("room"), 0);

    let (answer, _) = c.request("LHTTP/1.0 auth\r\n\r\n").await;
    assert_eq!(answer.header("status"), Some("401"));
    assert_eq!(answer.header("reason"), Some("auth needs a token header"));

    let expired = hs256(&json!({"sub": "a", "exp": now() - 10}));
    let (answer, _) = c
        .request(&format!("LHTTP/1.0 auth\r\ntoken:{expired}\r\n\r\n"))
        .await;
    assert_eq!(
        (answer.header("status"), answer.header("reason")),
        (Some("401"), Some("token expired"))
    );

    let (answer, _) = c
        .request(&format!(
            "LHTTP/1.0 auth\r\ntoken:{}\r\n\r\n",
            hs256(&claims("dave", 60))
        ))
        .await;
    assert_eq!(answer.command(), "ok");
    c.subscribe("room").await;
    assert_eq!(whoami(&mut c).await, "dave roles=");
}

#[tokio::test]
async fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let server = server(|c| {
        c.auth.anonymous = false;
        c.auth.auth_timeout_ms = 300;
    })
    .await;
    let mut c = server.client().await;
    let (status, reason, _) = c.recv_error().await;
    assert_eq!((status, reason.as_str()), (401, "authentication timeout"));
    assert_eq!(
        c.recv_close().await,
        (1008, "authentication timeout".to_owned())
    );
    server.wait_connections(0).await;
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_unless_refreshed() {
    let server = server(|_| {}).await;
    // Expires within two seconds (exp has one-second granularity).
    let short = hs256(&claims("erin", 2));
    let mut expiring = connect_bearer(&server.url("/"), &short).await.unwrap();
    let mut refreshed = connect_bearer(&server.url("/"), &short).await.unwrap();
    let (answer, _) = refreshed
        .request(&format!(
            "LHTTP/1.0 auth\r\ntoken:{}\r\n\r\n",
            hs256(&claims("erin", 120))
        ))
        .await;
    assert_eq!(answer.command(), "ok");

    let (status, reason, _) = expiring.recv_error().await;
    assert_eq!((status, reason.as_str()), (401, "token expired"));
    assert_eq!(
        expiring.recv_close().await,
        (1008, "token expired".to_owned())
    );

    // Well past the first token's expiry, the refreshed connection still works.
    refreshed.expect_silence(1500).await;
    assert_eq!(whoami(&mut refreshed).await, "erin roles=");
}

#[tokio::test]
async fn a_refresh_cannot_switch_to_another_user() {
    let server = server(|_| {}).await;
    let mut c = connect_bearer(&server.url("/"), &hs256(&claims("frank", 60)))
        .await
        .unwrap();
    let (answer, _) = c
        .request(&format!(
            "LHTTP/1.0 auth\r\ntoken:{}\r\n\r\n",
            hs256(&claims("grace", 60))
        ))
        .await;
    assert_eq!(answer.header("status"), Some("401"));
    assert!(answer.header("reason").unwrap().contains("another user"));
    assert_eq!(whoami(&mut c).await, "frank roles=");
}

#[tokio::test]
async fn a_server_without_keys_refuses_tokens_rather_than_ignoring_them() {
    let server = start_with(Server::builder(Config::default())).await;
    let (status, body) = connect_bearer(&server.url("/"), &hs256(&claims("a", 60)))
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 401);
    assert!(body.contains("not configured"), "{body}");
}

#[test]
fn anonymous_off_without_a_key_is_a_config_error() {
    let mut config = Config::default();
    config.auth.anonymous = false;
    let error = Server::builder(config).build().err().expect("refused");
    assert!(error.to_string().contains("needs a key"), "{error}");
}

#[test]
fn validating_a_config_reads_its_keys_as_building_the_server_does() {
    let mut config = Config::default();
    config.auth.rs256_public_key_file = Some(format!("{FIXTURES}/no-such-key.pem").into());
    let validated = config.validate().expect_err("refused").to_string();
    let built = Server::builder(config).build().err().expect("refused");
    assert!(
        validated.contains("auth.rs256_public_key_file"),
        "{validated}"
    );
    assert_eq!(validated, built.to_string());
    // The placeholder that lhttpd --check-config prints for a secret is not a secret.
    let mut config = Config::default();
    config.auth.hs256_secret = Some(lhttp_server::config::REDACTED.into());
    let error = config.validate().expect_err("refused").to_string();
    assert!(error.contains("auth.hs256_secret holds"), "{error}");
}

#[test]
fn auth_is_reserved_for_the_server() {
    let error = Server::builder(Config::default())
        .processor("auth", WhoAmI)
        .build()
        .err()
        .expect("refused");
    assert!(error.to_string().contains("auth"), "{error}");
}

#[tokio::test]
async fn the_auth_time_limit_does_not_wait_for_silence_to_end() {
    // A client that keeps sending (refused) messages is still closed at the limit.
    let server = server(|c| {
        c.auth.anonymous = false;
        c.auth.auth_timeout_ms = 500;
    })
    .await;
    let mut c = server.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        c.send("LHTTP/1.0 chat\r\n\r\nhi").await;
        match c.event().await {
            Event::Message(m) if m.header("reason") == Some("authentication timeout") => break,
            Event::Message(m) => assert_eq!(m.header("status"), Some("401")),
            other => panic!("{other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.recv_close().await.0, 1008);
}
