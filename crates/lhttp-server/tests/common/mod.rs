//! Test support: an in-process server on a free loopback port, and a WebSocket client that
//! speaks lhttp the way a user's client would.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use lhttp_server::{Config, Server, ServerBuilder, ServerHandle, proto::Message};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, protocol::CloseFrame},
};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server with the default configuration.
pub async fn start() -> TestServer {
    start_with(Server::builder(Config::default())).await
}

/// Starts a server built from `builder` on 127.0.0.1:0.
pub async fn start_with(builder: ServerBuilder) -> TestServer {
    run_server(builder.build().expect("server builds")).await
}

/// Starts a server that serves `/metrics` and `/healthz` on `metrics` instead.
pub async fn start_with_metrics(
    builder: ServerBuilder,
    metrics: tokio::net::TcpListener,
) -> TestServer {
    run_server(
        builder
            .build()
            .expect("server builds")
            .metrics_listener(metrics),
    )
    .await
}

/// Runs `server` on 127.0.0.1:0.
pub async fn run_server(server: Server) -> TestServer {
    let handle = server.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        server
            .run(listener, std::future::pending())
            .await
            .expect("server runs");
    });
    TestServer { addr, handle, task }
}

/// A config with the given limits changed.
pub fn config(change: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    change(&mut config);
    config
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A client connected to `/`.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url("/")).await
    }

    /// Waits for `Server::run` to return (after a shutdown).
    pub async fn stopped(&mut self) {
        tokio::time::timeout(WAIT * 2, &mut self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task");
    }

    /// The value of metric `lhttp_<name>` as `/metrics` shows it.
    pub fn metric(&self, name: &str) -> u64 {
        let rendered = self.handle.render_metrics();
        let prefix = format!("lhttp_{name} ");
        rendered
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .parse()
            .expect("a number")
    }

    /// Waits until the hub has no channel and no subscription left.
    pub async fn wait_hub_empty(&self) {
        let hub = self.handle.hub();
        let deadline = tokio::time::Instant::now() + WAIT;
        while hub.channel_count() > 0 || hub.subscription_count() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "hub not empty: {} channels, {} subscriptions",
                hub.channel_count(),
                hub.subscription_count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the server counts `n` open connections.
    pub async fn wait_connections(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.handle.connection_count() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} connections, server has {}",
                self.handle.connection_count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// POSTs `body` to `path`; returns the status and the body.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(self.http(path))
            .body(body)
            .send()
            .await
            .expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(self.http(path)).await.expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub next_id: u64,
}

/// What a client observed instead of an lhttp message.
#[derive(Debug)]
pub enum Event {
    Message(Message),
    /// A frame that is not a valid lhttp message (never expected from the server).
    Garbage(Vec<u8>),
    Close(Option<CloseFrame>),
    /// The TCP connection ended without a close frame.
    Gone,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connects");
        Client { ws, next_id: 0 }
    }

    /// Sends `text` as a text frame, exactly as given.
    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(tungstenite::Message::text(text))
            .await
            .expect("send");
    }

    /// Sends `bytes` as a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(tungstenite::Message::binary(bytes.to_vec()))
            .await
            .expect("send");
    }

    /// The next event, or a panic after [`WAIT`].
    pub async fn event(&mut self) -> Event {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the server");
            let data = match next {
                None | Some(Err(_)) => return Event::Gone,
                Some(Ok(tungstenite::Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(tungstenite::Message::Binary(b))) => b.to_vec(),
                Some(Ok(tungstenite::Message::Close(frame))) => return Event::Close(frame),
                Some(Ok(_)) => continue,
            };
            return match Message::parse(data.clone().into()) {
                Ok(message) => Event::Message(message),
                Err(_) => Event::Garbage(data),
            };
        }
    }

    /// The next lhttp message; panics on anything else.
    pub async fn recv(&mut self) -> Message {
        match self.event().await {
            Event::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next raw frame (text or binary), as received.
    pub async fn recv_frame(&mut self) -> tungstenite::Message {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the server")
                .expect("stream open")
                .expect("frame");
            if matches!(
                next,
                tungstenite::Message::Text(_) | tungstenite::Message::Binary(_)
            ) {
                return next;
            }
        }
    }

    /// The next error message; panics on anything else. Returns (status, reason).
    pub async fn recv_error(&mut self) -> (u16, String, Message) {
        let m = self.recv().await;
        assert_eq!(m.command(), "error", "expected an error, got {m:?}");
        let status = m.header("status").expect("status header").parse().unwrap();
        let reason = m.header("reason").expect("reason header").to_owned();
        (status, reason, m)
    }

    /// Waits for a close frame; returns its code (panics if the connection just vanished).
    pub async fn recv_close(&mut self) -> (u16, String) {
        loop {
            match self.event().await {
                Event::Close(Some(frame)) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Event::Close(None) => panic!("close without a code"),
                Event::Gone => panic!("connection ended without a close frame"),
                Event::Message(_) | Event::Garbage(_) => continue,
            }
        }
    }

    /// Asserts that nothing arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        match tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(tungstenite::Message::Pong(_) | tungstenite::Message::Ping(_)))) => {}
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }

    /// Sends `text` with a fresh `request-id` header inserted after the start line and waits for
    /// the answer carrying that id (`ok`, `error`, or a processor's reply). Other messages that
    /// arrive first are returned too, so nothing is lost.
    pub async fn request(&mut self, text: &str) -> (Message, Vec<Message>) {
        self.next_id += 1;
        let id = format!("t{}", self.next_id);
        let (start, rest) = text.split_once("\r\n").unwrap_or((text, ""));
        self.send(&format!("{start}\r\nrequest-id:{id}\r\n{rest}"))
            .await;
        let mut others = Vec::new();
        loop {
            let m = self.recv().await;
            // A delivery of the request itself (to a subscribed sender) carries the id too,
            // but also a publish header; the answer does not.
            if m.header("request-id") == Some(id.as_str()) && m.header("publish").is_none() {
                return (m, others);
            }
            others.push(m);
        }
    }

    /// Subscribes to `channels` (space separated) and waits until the server confirms.
    pub async fn subscribe(&mut self, channels: &str) {
        let (answer, _) = self
            .request(&format!("LHTTP/1.0 sub\r\nsubscribe:{channels}\r\n\r\n"))
            .await;
        assert_eq!(answer.command(), "ok", "subscribe failed: {answer:?}");
    }

    /// Publishes `body` to `channels` with `command` and waits for the server's confirmation.
    pub async fn publish(&mut self, command: &str, channels: &str, body: &str) -> Vec<Message> {
        let (answer, others) = self
            .request(&format!(
                "LHTTP/1.0 {command}\r\npublish:{channels}\r\n\r\n{body}"
            ))
            .await;
        assert_eq!(answer.command(), "ok", "publish failed: {answer:?}");
        others
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Waits until `channel` has exactly `n` subscribers (for clients that send no request-id).
pub async fn wait_subscribers(server: &TestServer, channel: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.handle.hub().subscriber_count(channel) != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel}: waiting for {n} subscribers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn body(m: &Message) -> String {
    String::from_utf8(m.body().to_vec()).expect("UTF-8 body")
}
pub mod history;
pub mod nats;
pub mod storm;
pub mod stream;

/// A connection to `server` authenticated as `user`, with a token minted from its `[auth]`.
pub async fn connect_as(server: &TestServer, user: &str) -> Client {
    let spec = lhttp_server::TokenSpec {
        user: user.into(),
        roles: Vec::new(),
        subscribe: Vec::new(),
        publish: Vec::new(),
        only: false,
        valid_for: Duration::from_secs(600),
    };
    let token = lhttp_server::mint_token(&server.handle.config().auth, &spec).unwrap();
    Client::connect(&format!("{}?token={token}", server.url("/"))).await
}
