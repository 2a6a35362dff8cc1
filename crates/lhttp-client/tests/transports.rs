//! Every transport against the real server: `wss://`, `tcp://`, `tls://`, `unix://` and the
//! in-process pipe carry the same messages, reconnect, authenticate and keep alive the same
//! way (`ws://` is the subject of the other test files).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    WAIT,
    everywhere::{TempDir, everywhere},
    pki::Pki,
};
use futures_util::StreamExt;
use lhttp_client::{Client, ConnectionState, Error, Message, Subscription};
use lhttp_server::{
    Config, Server, ServerHandle,
    config::{TcpTransport, UnixTransport},
};
use tokio::{net::TcpListener, task::JoinHandle};

async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription ended")
}

async fn wait_state(client: &Client, wanted: ConnectionState) {
    let mut states = client.state_changes();
    let reached = tokio::time::timeout(WAIT, states.wait_for(|s| *s == wanted)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "never reached {wanted:?}: {:?}",
        client.state()
    );
}

#[tokio::test]
async fn every_transport_carries_the_same_messages_to_every_other() {
    let server = everywhere(false, |_| {}).await;
    let mut clients = Vec::new();
    for url in server.urls() {
        let client = server
            .builder(url)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        clients.push((url.to_owned(), client));
    }
    clients.push((
        "in-process".into(),
        server.in_process().connect().await.unwrap(),
    ));
    let mut rooms = Vec::new();
    for (_, client) in &clients {
        rooms.push(client.subscribe(["room"]).await.unwrap());
    }
    // Each publishes once, with a body that is not UTF-8 (binary frames on a WebSocket);
    // every subscription receives every message, in each publisher's order.
    for (i, (_, client)) in clients.iter().enumerate() {
        let body = vec![0xff, 0x00, i as u8, b'\r', b'\n'];
        client
            .publish_with("room", "note", [("from", i.to_string())], body)
            .await
            .unwrap();
    }
    for ((url, _), room) in clients.iter().zip(&mut rooms) {
        let mut got = Vec::new();
        for _ in 0..clients.len() {
            let message = next(room).await;
            assert_eq!(message.command(), "note", "{url}");
            assert_eq!(message.header("publish"), Some("room"), "{url}");
            let from: u8 = message.header("from").unwrap().parse().unwrap();
            assert_eq!(
                &message.body()[..],
                [0xff, 0x00, from, b'\r', b'\n'],
                "{url}"
            );
            got.push(from);
        }
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4], "{url}");
    }
    // Requests and their answers too.
    for (url, client) in &clients {
        let inbox = client
            .request(Message::builder("inbox").build().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(inbox.header("inbox").is_some(), "{url}");
    }
}

/// A server with only the stream listeners: TCP on `tcp` (a port a previous server used,
/// bound again as soon as it is free) and a Unix socket at `socket`.
async fn streams_on(
    tcp: std::net::SocketAddr,
    socket: &std::path::Path,
) -> (ServerHandle, JoinHandle<()>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let listener = loop {
        match TcpListener::bind(tcp).await {
            Ok(listener) => break listener,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cannot bind {tcp} again: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut config = Config::default();
    config.server.shutdown_timeout_ms = 1_000;
    config.transports.tcp = Some(TcpTransport {
        listen: listener.local_addr().unwrap(),
    });
    config.transports.unix = Some(UnixTransport {
        path: socket.to_owned(),
        mode: "0600".into(),
    });
    let server = Server::builder(config)
        .build()
        .expect("server builds")
        .tcp_listener(listener);
    let handle = server.handle();
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let task = tokio::spawn(async move {
        server
            .run(main, std::future::pending())
            .await
            .expect("server runs");
    });
    (handle, task)
}

async fn stop(handle: ServerHandle, task: JoinHandle<()>) {
    handle.shutdown();
    tokio::time::timeout(WAIT * 2, task)
        .await
        .expect("server did not stop in time")
        .expect("server task");
}

#[tokio::test]
async fn a_stream_client_reconnects_to_a_restarted_server_and_restores_its_subscriptions() {
    let dir = TempDir::new();
    let socket = dir.0.join("lhttp.sock");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (handle, task) = streams_on(tcp, &socket).await;
    let mut clients = Vec::new();
    for url in [
        format!("tcp://{tcp}"),
        format!("unix://{}", socket.display()),
    ] {
        let connected = async {
            loop {
                match Client::builder(&url)
                    .backoff(Duration::from_millis(10), Duration::from_millis(50))
                    .connect()
                    .await
                {
                    Ok(client) => return client,
                    // The Unix socket is bound by the server's task.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        let client = tokio::time::timeout(WAIT, connected).await.expect(&url);
        let room = client.subscribe(["restored"]).await.unwrap();
        clients.push((url, client, room));
    }
    stop(handle, task).await;
    for (url, client, _) in &clients {
        wait_state(client, ConnectionState::Disconnected).await;
        assert!(
            matches!(
                client.publish("restored", "x").await,
                Err(Error::NotConnected)
            ),
            "{url}"
        );
    }
    let (handle, _task) = streams_on(tcp, &socket).await;
    for (_, client, _) in &clients {
        wait_state(client, ConnectionState::Connected).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while handle.hub().subscriber_count("restored") != 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clients[0].1.publish("restored", "back").await.unwrap();
    for (url, _, room) in &mut clients {
        assert_eq!(&next(room).await.body()[..], b"back", "{url}");
    }
}

#[tokio::test]
async fn a_server_shutting_down_closes_a_stream_client_like_a_websocket_one() {
    let server = everywhere(false, |_| {}).await;
    let mut clients = Vec::new();
    for url in server.urls() {
        let client = server
            .builder(url)
            .reconnect(false)
            .connect()
            .await
            .unwrap();
        let room = client.subscribe(["bye"]).await.unwrap();
        clients.push((url.to_owned(), client, room));
    }
    server.handle.shutdown();
    for (url, client, mut room) in clients {
        wait_state(&client, ConnectionState::Closed).await;
        let end = tokio::time::timeout(WAIT, room.next()).await;
        assert!(matches!(end, Ok(None)), "{url}: {end:?}");
        assert!(
            matches!(client.publish("bye", "x").await, Err(Error::Closed)),
            "{url}"
        );
    }
}

const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";

fn token(sub: &str, ttl: i64) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": sub, "exp": now + ttl}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_token_is_presented_in_auth_on_a_stream_and_a_refusal_says_why() {
    let server = everywhere(false, |config| {
        config.auth.anonymous = false;
        config.auth.hs256_secret = Some(SECRET.into());
        config.auth.leeway_secs = 0;
    })
    .await;
    for url in [&server.tcp, &server.tls] {
        let client = server
            .builder(url)
            .token(token("alice", 60))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut room = client.subscribe(["room"]).await.unwrap();
        client.publish("room", "authenticated").await.unwrap();
        assert_eq!(&next(&mut room).await.body()[..], b"authenticated");

        match server
            .builder(url)
            .reconnect(false)
            .token(token("alice", -60))
            .connect()
            .await
        {
            Err(Error::Connect { reason, .. }) => {
                assert_eq!(reason, "auth 401: token expired", "{url}")
            }
            other => panic!("{url}: expected a refusal, got {other:?}"),
        }

        let anonymous = server
            .builder(url)
            .reconnect(false)
            .connect()
            .await
            .unwrap();
        match anonymous.subscribe(["room"]).await {
            Err(Error::Server { status: 401, .. }) => {}
            other => panic!("{url}: expected 401, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn heartbeats_keep_a_quiet_stream_open_with_pings_on_or_off() {
    let server = everywhere(false, |config| {
        config.server.ping_interval_ms = 50;
        config.server.idle_timeout_ms = 300;
    })
    .await;
    let pinging = server
        .builder(&server.tcp)
        .ping_interval(Some(Duration::from_millis(60)))
        .reconnect(false)
        .connect()
        .await
        .unwrap();
    let answering = server
        .builder(&server.tcp)
        .ping_interval(None)
        .reconnect(false)
        .connect()
        .await
        .unwrap();
    let mut room = answering.subscribe(["quiet"]).await.unwrap();
    // Several idle timeouts pass.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(pinging.state(), ConnectionState::Connected);
    assert_eq!(answering.state(), ConnectionState::Connected);
    pinging.publish("quiet", "still here").await.unwrap();
    assert_eq!(&next(&mut room).await.body()[..], b"still here");
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate_on_wss_and_tls() {
    let server = everywhere(true, |_| {}).await;
    for url in [&server.wss, &server.tls] {
        let client = server.builder(url).connect().await.unwrap();
        client.publish("room", "mutual").await.unwrap();
        client.close().await;

        let (cert, key) = Pki::stranger_client();
        for builder in [
            Client::builder(url.as_str()).ca_certificate(server.pki.ca_pem.clone()),
            Client::builder(url.as_str())
                .ca_certificate(server.pki.ca_pem.clone())
                .client_certificate(cert.clone(), key.clone()),
        ] {
            let refused = async {
                let client = builder.reconnect(false).connect().await?;
                // On a stream without a token nothing is awaited at connect: the refusal
                // (TLS 1.3 sends it after the handshake) arrives with the first answer.
                client.publish("room", "refused").await
            };
            assert!(refused.await.is_err(), "{url}");
        }
    }
}

#[tokio::test]
async fn one_given_stream_serves_a_client_that_then_closes_for_good() {
    let server = everywhere(false, |_| {}).await;
    let client = Client::builder_with_stream(server.handle.connect_in_process())
        .connect()
        .await
        .unwrap();
    let mut room = client.subscribe(["pipe"]).await.unwrap();
    client.publish("pipe", "through the pipe").await.unwrap();
    assert_eq!(&next(&mut room).await.body()[..], b"through the pipe");
    server.handle.shutdown();
    // With nothing to reconnect with, the lost stream closes the client.
    wait_state(&client, ConnectionState::Closed).await;
}
