//! Upstream calls against a real HTTP server on loopback that records what it receives.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::IntoResponse,
    routing::any,
};
use common::*;
use lhttp_server::{
    Config, Context, Processor, Rejection, Server, async_trait, upstream::Method as UpstreamMethod,
};

/// One request as the back end saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A back end on 127.0.0.1:0, by last path segment: `slow` sleeps 2 s, `pause` 300 ms,
/// `empty` answers 204, `redirect` answers 302 to `/secret`, `big` answers 100 KiB; anything
/// else answers 201 with a JSON body naming the path and the body size.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start() -> Backend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(any(record)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn record(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.to_vec(),
    });
    match uri.path().rsplit('/').next().unwrap_or("") {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "late".into_response()
        }
        "pause" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "paused".into_response()
        }
        "empty" => StatusCode::NO_CONTENT.into_response(),
        "redirect" => (StatusCode::FOUND, [("location", "/secret")], "").into_response(),
        "big" => vec![b'x'; 100 * 1024].into_response(),
        _ => (
            StatusCode::CREATED,
            [("content-type", "application/json")],
            format!(r#"{{"stored":"{}","bytes":{}}}"#, uri.path(), body.len()),
        )
            .into_response(),
    }
}

async fn server_for(backend: &Backend, change: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::default();
    config.upstream.allow = vec![backend.url("/api/")];
    change(&mut config);
    start_with(Server::builder(config)).await
}

/// The chat-record use case: one message is published and posted to the back end; the back
/// end sees a documented set of headers and the body; its answer is relayed to the sender.
#[tokio::test]
async fn post_publishes_and_relays_the_answer() {
    let backend = Backend::start().await;
    let server = server_for(&backend, |_| {}).await;
    let mut sub = server.client().await;
    sub.subscribe("room").await;
    let mut c = server.client().await;
    let url = backend.url("/api/record?x=1");
    c.send(&format!(
        "LHTTP/1.0 chat\r\nrequest-id:r1\r\nupstream:POST {url}\r\npublish:room\r\n\
         content-type:text/plain\r\nsecret-header:do-not-forward\r\n\r\nhello record"
    ))
    .await;
    let published = sub.recv().await;
    assert_eq!(body(&published), "hello record");
    assert_eq!(published.header("upstream"), None);

    let answer = c.recv().await;
    assert_eq!(answer.command(), "chat");
    assert_eq!(answer.header("status"), Some("201"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("request-id"), Some("r1"));
    assert_eq!(body(&answer), r#"{"stored":"/api/record","bytes":12}"#);
    c.expect_silence(200).await; // one answer only: no separate `ok`

    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/record");
    assert_eq!(request.body, b"hello record");
    assert_eq!(request.headers["content-type"], "text/plain");
    assert_eq!(request.headers["x-request-id"], "r1");
    assert_eq!(request.headers["x-lhttp-command"], "chat");
    assert_eq!(request.headers["x-lhttp-channels"], "room");
    assert_eq!(request.headers["x-forwarded-for"], "127.0.0.1");
    assert!(request.headers["x-lhttp-connection"].parse::<u64>().is_ok());
    assert!(!request.headers.contains_key("secret-header"));
    assert!(!request.headers.contains_key("publish"));
}

#[tokio::test]
async fn get_sends_no_body() {
    let backend = Backend::start().await;
    let server = server_for(&backend, |_| {}).await;
    let mut c = server.client().await;
    c.send(&format!(
        "LHTTP/1.0 q\r\nupstream:GET {}\r\n\r\nignored body",
        backend.url("/api/items")
    ))
    .await;
    let answer = c.recv().await;
    assert_eq!(answer.header("status"), Some("201"));
    let seen = backend.seen();
    assert_eq!((seen[0].method.as_str(), seen[0].body.len()), ("GET", 0));
}

#[tokio::test]
async fn no_content_relays_nothing_unless_an_answer_was_asked_for() {
    let backend = Backend::start().await;
    let server = server_for(&backend, |_| {}).await;
    let mut c = server.client().await;
    let empty = backend.url("/api/empty");
    c.send(&format!("LHTTP/1.0 q\r\nupstream:POST {empty}\r\n\r\nx"))
        .await;
    c.expect_silence(500).await;
    assert_eq!(backend.seen().len(), 1, "the call was made");
    let (answer, _) = c
        .request(&format!("LHTTP/1.0 q\r\nupstream:DELETE {empty}\r\n\r\nx"))
        .await;
    assert_eq!(
        (answer.command(), answer.header("status")),
        ("ok", Some("204"))
    );
}

#[tokio::test]
async fn refused_connection_is_502_and_slow_back_end_is_504() {
    let backend = Backend::start().await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = server_for(&backend, |c| {
        c.upstream.timeout_ms = 300;
        c.upstream.allow.push(format!("http://{closed}/"));
    })
    .await;
    let mut c = server.client().await;
    let (answer, _) = c
        .request(&format!(
            "LHTTP/1.0 q\r\nupstream:POST http://{closed}/x\r\n\r\n"
        ))
        .await;
    assert_eq!(answer.command(), "error");
    assert_eq!(answer.header("status"), Some("502"));

    let (answer, _) = c
        .request(&format!(
            "LHTTP/1.0 q\r\nupstream:GET {}\r\n\r\n",
            backend.url("/api/slow")
        ))
        .await;
    assert_eq!(answer.command(), "error");
    assert_eq!(answer.header("status"), Some("504"));
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains("lhttp_upstream_failures_total 2\n"),
        "{metrics}"
    );
}

/// Server-side request forgery: anything outside the allowance is refused with 403 and no
/// request leaves the server; redirects are relayed, never followed.
#[tokio::test]
async fn only_allowed_urls_are_called() {
    let backend = Backend::start().await;
    let server = server_for(&backend, |_| {}).await;
    let mut c = server.client().await;
    let host = backend.addr.to_string();
    let port = backend.addr.port();
    let refused = [
        format!("http://{host}/secret"),
        format!("http://{host}/apix"),
        format!("http://{host}/api/../secret"),
        format!("http://{host}/api/%2e%2e/secret"),
        format!("http://{host}@127.0.0.2:{port}/api/x"),
        format!("http://127.0.0.2:{port}/api/x"),
        format!("http://localhost:{port}/api/x"),
        format!("https://{host}/api/x"),
        "file:///etc/passwd".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "not a url".to_owned(),
    ];
    for url in &refused {
        let (answer, _) = c
            .request(&format!(
                "LHTTP/1.0 q\r\nupstream:GET {url}\r\npublish:room\r\n\r\n"
            ))
            .await;
        assert_eq!(answer.header("status"), Some("403"), "{url}: {answer:?}");
    }
    for bad in ["GET", "FETCH http://x/", "CONNECT {host}"] {
        let (answer, _) = c
            .request(&format!("LHTTP/1.0 q\r\nupstream:{bad}\r\n\r\n"))
            .await;
        assert_eq!(answer.header("status"), Some("400"), "{bad}");
    }
    let (answer, _) = c
        .request(&format!(
            "LHTTP/1.0 q\r\nupstream:GET {}\r\n\r\n",
            backend.url("/api/redirect")
        ))
        .await;
    assert_eq!(answer.header("status"), Some("302"));
    let paths: Vec<String> = backend.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        ["/api/redirect"],
        "nothing else may have been requested"
    );
}

/// Named routes from the config, and from code.
#[tokio::test]
async fn named_routes() {
    let backend = Backend::start().await;
    let mut config = Config::default();
    config
        .upstream
        .routes
        .insert("record".into(), backend.url("/store/record"));
    let server = start_with(
        Server::builder(config)
            .upstream_route("audit", &backend.url("/audit"))
            .processor("audited", Audited),
    )
    .await;
    let mut c = server.client().await;
    let (answer, _) = c
        .request("LHTTP/1.0 chat\r\nupstream:POST record\r\n\r\nrow")
        .await;
    assert_eq!(answer.header("status"), Some("201"));
    assert_eq!(body(&answer), r#"{"stored":"/store/record","bytes":3}"#);
    // Only the routes are open: a URL, even the route's own, is not.
    let (answer, _) = c
        .request(&format!(
            "LHTTP/1.0 chat\r\nupstream:POST {}\r\n\r\n",
            backend.url("/store/record")
        ))
        .await;
    assert_eq!(answer.header("status"), Some("403"));
    let (answer, _) = c.request("LHTTP/1.0 audited\r\n\r\nlog me").await;
    assert_eq!(answer.header("audit-status"), Some("201"));
}

/// Calls a route from a processor.
struct Audited;

#[async_trait]
impl Processor for Audited {
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let response = ctx
            .server()
            .upstream()
            .call_route(
                UpstreamMethod::Post,
                "audit",
                ctx.message().body().clone(),
                &[],
            )
            .await
            .map_err(|e| e.rejection())?;
        let reply = ctx
            .reply_builder()
            .header("audit-status", response.status.to_string())
            .build()
            .unwrap();
        let _ = ctx.reply(&reply);
        Ok(())
    }
}

/// 100 calls in flight on one connection while its pub/sub keeps working; beyond the caps, 429
/// (per connection) and 503 (per server).
#[tokio::test]
async fn concurrent_calls_do_not_block_the_connection_and_are_capped() {
    let backend = Backend::start().await;
    let server = server_for(&backend, |c| {
        c.upstream.max_in_flight_per_connection = 100;
        c.upstream.max_in_flight = 150;
    })
    .await;
    let mut c = server.client().await;
    let pause = backend.url("/api/pause");
    for i in 0..100 {
        c.send(&format!(
            "LHTTP/1.0 q\r\nrequest-id:u{i}\r\nupstream:GET {pause}\r\n\r\n"
        ))
        .await;
    }
    // The connection is not blocked: pub/sub answers while the calls are in flight.
    let (answer, early) = c
        .request("LHTTP/1.0 s\r\nsubscribe:meanwhile\r\n\r\n")
        .await;
    assert_eq!(answer.command(), "ok");
    assert!(
        early.len() < 100,
        "the subscribe waited for the upstream calls"
    );
    // One more is over the per-connection cap.
    let (answer, _) = c
        .request(&format!("LHTTP/1.0 q\r\nupstream:GET {pause}\r\n\r\n"))
        .await;
    assert_eq!(answer.header("status"), Some("429"));
    let mut ids: Vec<String> = early
        .iter()
        .filter_map(|m| m.header("request-id").map(str::to_owned))
        .collect();
    while ids.len() < 100 {
        let m = c.recv().await;
        assert_eq!(m.header("status"), Some("200"), "{m:?}");
        ids.push(m.header("request-id").unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);

    // The server-wide cap: two connections of 100 against a cap of 150. The first one's calls
    // take 2 s, so they hold their slots while the second one's arrive.
    let mut a = server.client().await;
    let mut b = server.client().await;
    let slow = backend.url("/api/slow");
    for i in 0..100 {
        a.send(&format!(
            "LHTTP/1.0 q\r\nrequest-id:a{i}\r\nupstream:GET {slow}\r\n\r\n"
        ))
        .await;
    }
    a.subscribe("sync").await;
    let mut statuses = BTreeMap::<String, usize>::new();
    for i in 0..100 {
        b.send(&format!(
            "LHTTP/1.0 q\r\nrequest-id:b{i}\r\nupstream:GET {pause}\r\n\r\n"
        ))
        .await;
    }
    for _ in 0..100 {
        let m = b.recv().await;
        *statuses
            .entry(m.header("status").unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(statuses.get("503"), Some(&50), "{statuses:?}");
    assert_eq!(statuses.get("200"), Some(&50), "{statuses:?}");
}

#[tokio::test]
async fn oversized_answer_is_502() {
    let backend = Backend::start().await;
    let server = server_for(&backend, |_| {}).await;
    let mut c = server.client().await;
    let (answer, _) = c
        .request(&format!(
            "LHTTP/1.0 q\r\nupstream:GET {}\r\n\r\n",
            backend.url("/api/big")
        ))
        .await;
    assert_eq!(answer.header("status"), Some("502"));
    assert!(answer.header("reason").unwrap().contains("too large"));
}

/// The back end learns who is calling: `x-lhttp-user` carries the token's `sub` (printable
/// ASCII as is, anything else percent-encoded), and an anonymous client sends none.
#[tokio::test]
async fn the_back_end_sees_the_authenticated_user() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";
    let backend = Backend::start().await;
    let server = server_for(&backend, |c| c.auth.hs256_secret = Some(SECRET.into())).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "alice Ü%", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut request = server.url("/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut alice = Client { ws, next_id: 0 };
    let mut anonymous = server.client().await;
    let url = backend.url("/api/who");
    for client in [&mut alice, &mut anonymous] {
        let (answer, _) = client
            .request(&format!("LHTTP/1.0 who\r\nupstream:POST {url}\r\n\r\n"))
            .await;
        assert_eq!(answer.header("status"), Some("201"));
    }
    let seen = backend.seen();
    assert_eq!(seen[0].headers["x-lhttp-user"], "alice %C3%9C%25");
    assert!(!seen[1].headers.contains_key("x-lhttp-user"));
}
