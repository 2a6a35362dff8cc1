//! Every transport on real sockets: byte streams over TCP, TLS and a Unix socket, WebSocket over
//! TLS, and the in-process connection; clients on different transports talk to each other, and
//! bad framing is answered as on WebSocket.

mod common;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use common::{
    TestServer, WAIT, body, config,
    stream::{Item, StreamClient, TestCert},
    wait_subscribers,
};
use lhttp_server::{
    ChannelRule, Config, Server,
    config::{TcpTransport, TlsTransport, UnixTransport},
};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// A server with `[transports.tcp]` (and whatever `change` sets), and the TCP port's address.
async fn with_tcp(change: impl FnOnce(&mut Config)) -> (TestServer, std::net::SocketAddr) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let config = config(|c| {
        c.transports.tcp = Some(TcpTransport { listen: tcp_addr });
        change(c);
    });
    let server = Server::builder(config).build().unwrap().tcp_listener(tcp);
    (common::run_server(server).await, tcp_addr)
}

async fn tcp_client(addr: std::net::SocketAddr) -> StreamClient<TcpStream> {
    StreamClient::new(TcpStream::connect(addr).await.unwrap())
}

/// A path for a Unix socket in a fresh directory.
fn socket_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lhttp-unix-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("lhttpd.sock")
}

/// Waits until the socket file exists (the server binds it when it starts running).
async fn wait_for_socket(path: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no socket at {path:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

use std::os::unix::fs::MetadataExt;

#[tokio::test]
async fn a_tcp_client_and_a_websocket_client_chat_with_each_other() {
    let (server, tcp_addr) = with_tcp(|_| {}).await;
    let mut tcp = tcp_client(tcp_addr).await;
    let mut ws = server.client().await;
    tcp.subscribe("room").await;
    ws.subscribe("room").await;

    let mut own = ws.publish("chat", "room", "hello from the browser").await;
    let got = tcp.recv().await;
    assert_eq!(got.command(), "chat");
    assert_eq!(got.header("publish"), Some("room"));
    assert_eq!(body(&got), "hello from the browser");
    let own = match own.pop() {
        Some(own) => own,
        None => ws.recv().await,
    };
    assert_eq!(body(&own), "hello from the browser");

    // Binary bodies travel as they are on a byte stream.
    tcp.send_bytes(b"LHTTP/1.0 chat\r\npublish:room\r\n\r\n\xff\x00bytes")
        .await;
    let got = ws.recv().await;
    assert_eq!(got.body().as_ref(), b"\xff\x00bytes");
    assert_eq!(tcp.recv().await.body().as_ref(), b"\xff\x00bytes");

    let metrics = server.handle.render_metrics();
    for line in [
        "lhttp_connections 2\n",
        "lhttp_connections_by_transport{transport=\"tcp\"} 1\n",
        "lhttp_connections_by_transport{transport=\"ws\"} 1\n",
        "lhttp_connections_by_transport{transport=\"unix\"} 0\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }

    // Shutting down ends a stream with a close message, after what was queued.
    server.handle.shutdown();
    let (code, reason) = tcp.recv_close().await;
    assert_eq!(code, 1012, "{reason}");
    assert!(
        reason.starts_with("server restarting; retry in "),
        "{reason}"
    );
    assert!(matches!(tcp.item().await, Item::End));
}

#[tokio::test]
async fn bad_framing_is_closed_with_a_reason_and_everyone_else_keeps_being_served() {
    let (server, tcp_addr) = with_tcp(|c| c.limits.max_message_size = 1024).await;
    let mut bystander = tcp_client(tcp_addr).await;
    bystander.subscribe("news").await;

    // A message where a length line belongs.
    let mut typo = tcp_client(tcp_addr).await;
    typo.send_raw(b"LHTTP/1.0 chat\r\npublish:news\r\n\r\nhi")
        .await;
    let (code, reason) = typo.recv_close().await;
    assert_eq!(code, 1002);
    assert!(reason.contains("length"), "{reason}");

    // A frame over the limit is refused from its length line, before its bytes.
    let mut big = tcp_client(tcp_addr).await;
    big.send_raw(b"1025\r\n").await;
    assert_eq!(big.recv_close().await, (1009, "message too big".into()));

    // A malformed message in a good frame is an error answer, as on WebSocket.
    let mut sloppy = tcp_client(tcp_addr).await;
    let answer = sloppy.request("LHTTP/1.0 \r\n\r\n").await;
    assert_eq!(answer.command(), "error");
    assert_eq!(answer.header("status"), Some("400"));

    // Typed by hand: stray line ends, a bare LF after the length.
    sloppy
        .send_raw(b"\r\n\r\n40\nLHTTP/1.0 chat\r\npublish:news\r\n\r\nby hand!\r\n")
        .await;
    assert_eq!(body(&bystander.recv().await), "by hand!");
    let mut ws = server.client().await;
    ws.publish("chat", "news", "still here").await;
    assert_eq!(body(&bystander.recv().await), "still here");
    assert_eq!(server.metric("protocol_closes_total"), 2);
}

#[tokio::test]
async fn a_stalled_frame_is_closed_on_its_own_clock() {
    let (_server, tcp_addr) = with_tcp(|c| c.limits.message_timeout_ms = 200).await;
    let mut stalled = tcp_client(tcp_addr).await;
    stalled.send_raw(b"40\r\nLHTTP/1.0 ch").await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        stalled.recv_close().await,
        (1008, "message not completed in time".into())
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_stream_client_authenticates_with_an_auth_message() {
    let secret = "a-secret-of-at-least-thirty-two-bytes!!";
    let (_server, tcp_addr) = with_tcp(|c| {
        c.auth.anonymous = false;
        c.auth.hs256_secret = Some(secret.into());
    })
    .await;
    let mut client = tcp_client(tcp_addr).await;
    let refused = client
        .request("LHTTP/1.0 sub\r\nsubscribe:room\r\n\r\n")
        .await;
    assert_eq!(refused.header("status"), Some("401"));
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "ann", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let answer = client
        .request(&format!("LHTTP/1.0 auth\r\ntoken:{token}\r\n\r\n"))
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    client.subscribe("room").await;
}

#[tokio::test]
async fn unix_socket_clients_need_no_token_and_rules_know_them_by_uid() {
    let path = socket_path("rules");
    let me = uid();
    let config = config(|c| {
        c.auth.anonymous = false;
        c.auth.hs256_secret = Some("a-secret-of-at-least-thirty-two-bytes!!".into());
        c.transports.unix = Some(UnixTransport {
            path: path.clone(),
            mode: "0660".into(),
        });
        c.auth.rules = vec![
            // Only this test's uid may publish jobs; any local client may read them.
            ChannelRule {
                channels: "jobs".into(),
                publish: true,
                uids: vec![me],
                ..Default::default()
            },
            ChannelRule {
                channels: "jobs".into(),
                subscribe: true,
                ..Default::default()
            },
            ChannelRule {
                channels: "admin".into(),
                publish: true,
                uids: vec![me.wrapping_add(1)],
                ..Default::default()
            },
        ];
    });
    let server = common::run_server(Server::builder(config).build().unwrap()).await;
    wait_for_socket(&path).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket has the configured mode");

    let mut reader = StreamClient::new(UnixStream::connect(&path).await.unwrap());
    reader.subscribe("jobs").await;
    let mut publisher = StreamClient::new(UnixStream::connect(&path).await.unwrap());
    let answer = publisher
        .request("LHTTP/1.0 job\r\npublish:jobs\r\n\r\nresize photo 7")
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    assert_eq!(body(&reader.recv().await), "resize photo 7");

    let refused = publisher
        .request("LHTTP/1.0 job\r\npublish:admin\r\n\r\nx")
        .await;
    assert_eq!(
        refused.header("status"),
        Some("403"),
        "admin is for another uid"
    );

    // A WebSocket client has no credentials: the uid rule is not for it, and it needs a token.
    let mut ws = server.client().await;
    let (answer, _) = ws
        .request("LHTTP/1.0 job\r\npublish:jobs\r\n\r\nforged")
        .await;
    assert_eq!(answer.header("status"), Some("401"));
    drop(server);
}

#[tokio::test]
async fn a_request_from_websocket_is_answered_by_a_worker_on_a_unix_socket() {
    let path = socket_path("request");
    let config = config(|c| {
        c.transports.unix = Some(UnixTransport {
            path: path.clone(),
            mode: "0600".into(),
        });
    });
    let server = common::run_server(Server::builder(config).build().unwrap()).await;
    wait_for_socket(&path).await;
    let mut worker = StreamClient::new(UnixStream::connect(&path).await.unwrap());
    let joined = worker
        .request("LHTTP/1.0 join\r\nsubscribe:resize\r\nqueue:workers\r\n\r\n")
        .await;
    assert_eq!(joined.command(), "ok", "{joined:?}");

    let mut requester = server.client().await;
    requester
        .send("LHTTP/1.0 resize\r\npublish:resize\r\nreply-to:\r\nrequest-id:r1\r\n\r\nphoto 7")
        .await;
    let job = worker.recv().await;
    assert_eq!(body(&job), "photo 7");
    let reply_to = job.header("reply-to").expect("a request").to_owned();
    worker
        .send(&format!(
            "LHTTP/1.0 resized\r\npublish:{reply_to}\r\n\r\ndone: photo 7"
        ))
        .await;
    let answer = requester.recv().await;
    assert_eq!(answer.header("request-id"), Some("r1"));
    assert_eq!(body(&answer), "done: photo 7");
}

#[tokio::test]
async fn wss_serves_websocket_and_https_on_one_port_and_reloads_its_certificate() {
    let cert = TestCert::new("wss");
    let config = config(|c| c.server.tls = Some(cert.config()));
    let server = common::run_server(Server::builder(config).build().unwrap()).await;

    // WebSocket over TLS.
    let (tls, first) = tls_connect(server.addr, &cert).await;
    assert_eq!(first, cert.der);
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/chat", tls)
        .await
        .expect("WebSocket over TLS");
    ws.send(WsMessage::text(
        "LHTTP/1.0 sub\r\nsubscribe:room\r\nrequest-id:1\r\n\r\n",
    ))
    .await
    .unwrap();
    assert!(next_text(&mut ws).await.starts_with("LHTTP/1.0 ok"));
    server.handle.publish_to("room", &chat("over TLS")).unwrap();
    assert!(next_text(&mut ws).await.ends_with("\r\n\r\nover TLS"));

    // HTTPS on the same port.
    let (mut tls, _) = tls_connect(server.addr, &cert).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // A new certificate on disk is used after a reload; the open connection keeps working.
    let cert = cert.renew();
    assert_ne!(cert.der, first);
    server.handle.reload_tls().expect("the new files load");
    assert_eq!(tls_connect(server.addr, &cert).await.1, cert.der);
    server
        .handle
        .publish_to("room", &chat("still here"))
        .unwrap();
    assert!(next_text(&mut ws).await.ends_with("\r\n\r\nstill here"));

    // A broken file keeps the certificate in use, and says which file.
    std::fs::write(&cert.key_file, "not a key").unwrap();
    let error = server.handle.reload_tls().unwrap_err();
    assert!(error.contains("key.pem"), "{error}");
    assert_eq!(tls_connect(server.addr, &cert).await.1, cert.der);
}

#[tokio::test]
async fn a_tls_byte_stream_and_a_plaintext_client_on_it_is_not_served() {
    let cert = TestCert::new("stream");
    let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let tls = cert.config();
    let config = config(|c| {
        c.transports.tls = Some(TlsTransport {
            listen: tls_addr,
            cert_file: tls.cert_file,
            key_file: tls.key_file,
            client_ca_file: None,
            reload_interval_ms: 0,
        })
    });
    let server = Server::builder(config)
        .build()
        .unwrap()
        .tls_listener(tls_listener);
    let server = common::run_server(server).await;
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = cert.connector().connect(name, tcp).await.unwrap();
    let mut client = StreamClient::new(stream);
    client.subscribe("room").await;
    let mut ws = server.client().await;
    ws.publish("chat", "room", "to the TLS stream").await;
    wait_subscribers(&server, "room", 1).await;
    assert_eq!(body(&client.recv().await), "to the TLS stream");

    // Plain bytes on the TLS port are not a handshake: the connection is dropped, and the
    // server goes on.
    let mut plain = TcpStream::connect(tls_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"34\r\nLHTTP/1.0 sub\r\nsubscribe:room\r\n\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is closed");
    assert!(
        !answer.starts_with(b"LHTTP"),
        "no lhttp message in the clear"
    );
    ws.publish("chat", "room", "again").await;
    assert_eq!(body(&client.recv().await), "again");
}

#[tokio::test]
async fn an_in_process_connection_gets_every_message_once_and_in_order() {
    let server = common::start().await;
    let mut local = StreamClient::new(server.handle.connect_in_process());
    local.subscribe("ticks").await;
    let mut ws = server.client().await;
    ws.subscribe("ticks").await;
    wait_subscribers(&server, "ticks", 2).await;
    for i in 0..500 {
        server
            .handle
            .publish_to("ticks", &chat(&i.to_string()))
            .unwrap();
    }
    for i in 0..500 {
        assert_eq!(body(&local.recv().await), i.to_string());
    }
    // And it publishes like any client: the WebSocket subscriber sees its message last.
    local
        .send("LHTTP/1.0 chat\r\npublish:ticks\r\n\r\nfrom inside")
        .await;
    for i in 0..500 {
        assert_eq!(body(&ws.recv().await), i.to_string());
    }
    assert_eq!(body(&ws.recv().await), "from inside");
    assert_eq!(server.handle.connection_count(), 2);
    let metrics = server.handle.render_metrics();
    assert!(
        metrics.contains("lhttp_connections_by_transport{transport=\"in_process\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_python_client_of_a_few_dozen_lines_chats_over_tcp() {
    let (server, tcp_addr) = with_tcp(|_| {}).await;
    let mut ws = server.client().await;
    ws.subscribe("room").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/clients/lhttp_stream.py"
    );
    let python = tokio::process::Command::new("python3")
        .arg(script)
        .arg(tcp_addr.to_string())
        .arg("room")
        .arg("hello from python")
        .output();
    let output = tokio::time::timeout(WAIT, python)
        .await
        .expect("python finished")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It received its own message back through its subscription.
    assert!(stdout.contains("room: hello from python"), "{stdout}");
    assert_eq!(body(&ws.recv().await), "hello from python");
}

/// A TLS connection to `addr` that trusts `cert` only, and the certificate the server showed.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cert: &TestCert,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = cert
        .connector()
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, presented)
}

/// The next text frame of a WebSocket client.
async fn next_text<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        if let WsMessage::Text(text) = frame {
            return text.to_string();
        }
    }
}

fn chat(text: &str) -> lhttp_server::proto::Message {
    lhttp_server::proto::Message::builder("chat")
        .body(text.to_owned())
        .build()
        .unwrap()
}
