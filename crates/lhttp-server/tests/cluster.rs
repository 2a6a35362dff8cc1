//! Cluster over NATS: several in-process lhttp nodes share channels through a real
//! `nats-server` child process (Debian package `nats-server`), started on a free port and
//! killed when its guard is dropped. Every wait is bounded.

mod common;

#[allow(dead_code)]
#[path = "../../lhttp-client/tests/common/relay.rs"]
mod relay;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{
    nats::{NATS_UP, NatsServer, free_port},
    stream::{StreamClient, TestCert},
    *,
};
use lhttp_server::{
    Server,
    config::{TcpTransport, TlsTransport, UnixTransport},
    proto::Message,
};
use tokio::net::UnixStream;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------------
// lhttp nodes

/// Starts an lhttp node that joins the cluster through `nats_url`.
async fn node(nats_url: &str) -> TestServer {
    let url = nats_url.to_owned();
    start_with(Server::builder(config(move |c| c.cluster.nats = vec![url]))).await
}

/// A node of the cluster on every transport: WebSocket on its main port, and byte streams over
/// raw TCP, TLS and a Unix socket.
struct EveryTransport {
    server: TestServer,
    tcp: SocketAddr,
    tls: SocketAddr,
    unix: PathBuf,
}

/// Starts a node that joins the cluster through `nats_url` and serves every transport; its
/// TLS port presents `cert`, its Unix socket is `<name>.sock` in the certificate's directory.
async fn node_on_every_transport(nats_url: &str, cert: &TestCert, name: &str) -> EveryTransport {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tcp_addr, tls_addr) = (tcp.local_addr().unwrap(), tls.local_addr().unwrap());
    let unix = cert.dir.join(format!("{name}.sock"));
    let url = nats_url.to_owned();
    let config = config(|c| {
        c.cluster.nats = vec![url];
        c.transports.tcp = Some(TcpTransport { listen: tcp_addr });
        c.transports.tls = Some(TlsTransport {
            listen: tls_addr,
            cert_file: cert.cert_file.clone(),
            key_file: cert.key_file.clone(),
            client_ca_file: None,
            reload_interval_ms: 0,
        });
        c.transports.unix = Some(UnixTransport {
            path: unix.clone(),
            mode: "0600".into(),
        });
    });
    let server = Server::builder(config)
        .build()
        .expect("server builds")
        .tcp_listener(tcp)
        .tls_listener(tls);
    let server = run_server(server).await;
    let deadline = Instant::now() + WAIT;
    while !unix.exists() {
        assert!(Instant::now() < deadline, "no Unix socket at {unix:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    EveryTransport {
        server,
        tcp: tcp_addr,
        tls: tls_addr,
        unix,
    }
}

impl EveryTransport {
    async fn tcp_client(&self) -> StreamClient<tokio::net::TcpStream> {
        StreamClient::new(tokio::net::TcpStream::connect(self.tcp).await.unwrap())
    }

    async fn unix_client(&self) -> StreamClient<UnixStream> {
        StreamClient::new(UnixStream::connect(&self.unix).await.unwrap())
    }

    /// A client over TLS that trusts `cert` only, as a client of `localhost`.
    async fn tls_client(&self, cert: &TestCert) -> StreamClient<TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.tls).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = cert
            .connector()
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        StreamClient::new(tls)
    }
}

/// Waits until `server` is connected to NATS (`true`) or knows it is not (`false`).
async fn wait_connected(server: &TestServer, connected: bool) {
    let deadline = Instant::now() + NATS_UP;
    while server.handle.cluster_connected() != Some(connected) {
        assert!(
            Instant::now() < deadline,
            "node {}: NATS connected is {:?}, expected {connected}",
            server.addr,
            server.handle.cluster_connected()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `server` holds a NATS subscription for `channel` that NATS has confirmed.
async fn wait_interest(server: &TestServer, channel: &str) {
    let deadline = Instant::now() + NATS_UP;
    while !server.handle.cluster_subscribed(channel) {
        assert!(
            Instant::now() < deadline,
            "node {}: no NATS subscription for {channel}",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(channel: &str, body: &str) -> String {
    format!("LHTTP/1.0 chat\r\npublish:{channel}\r\n\r\n{body}")
}

/// Receives `n` messages; returns their bodies.
async fn bodies(client: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(body(&client.recv().await));
    }
    out
}

/// [`bodies`] on a byte-stream connection.
async fn stream_bodies<S>(client: &mut StreamClient<S>, n: usize) -> Vec<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(body(&client.recv().await));
    }
    out
}

/// Asserts that `got` holds, among other publishers' messages, exactly `prefix0` ..
/// `prefix<n-1>`, each once, in that order.
fn assert_all_in_order(got: &[String], prefix: &str, n: usize, what: &str) {
    let of: Vec<&str> = got
        .iter()
        .filter(|b| b.starts_with(prefix))
        .map(String::as_str)
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    assert_eq!(of, want, "{what}: the messages of publisher {prefix}");
}

/// Keeps publishing numbered messages to `channel` through `publisher` (one every 100 ms)
/// until `subscriber` receives one of them; fails after `NATS_UP`.
async fn publish_until_received(
    publisher: &mut Client,
    subscriber: &mut Client,
    channel: &str,
    what: &str,
) -> Message {
    let deadline = Instant::now() + NATS_UP;
    for i in 0.. {
        assert!(Instant::now() < deadline, "{what}: nothing arrived");
        publisher.send(&chat(channel, &format!("probe-{i}"))).await;
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(100), subscriber.recv()).await
        {
            return message;
        }
    }
    unreachable!()
}

async fn healthz(server: &TestServer) -> (u16, serde_json::Value) {
    let (status, text) = server.get("/healthz").await;
    let value = serde_json::from_str(&text).expect("healthz answers JSON");
    (status, value)
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Three nodes, subscribers on all of them, publishes from the third over WebSocket and over
/// `POST /publish`: every subscriber gets every message exactly once, in publish order, and
/// the subscriber on the publishing node gets no echo duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_on_every_node_gets_every_message_once_and_in_order() {
    const N: usize = 200;
    let nats = NatsServer::start();
    let a = node(&nats.url()).await;
    let b = node(&nats.url()).await;
    let c = node(&nats.url()).await;
    for server in [&a, &b, &c] {
        wait_connected(server, true).await;
    }
    let mut sub_a = a.client().await;
    let mut sub_b = b.client().await;
    let mut sub_c = c.client().await;
    sub_a.subscribe("room").await;
    sub_b.subscribe("room").await;
    sub_c.subscribe("room").await;
    for server in [&a, &b, &c] {
        wait_interest(server, "room").await;
    }

    let mut publisher = c.client().await;
    for i in 0..N {
        publisher.send(&chat("room", &format!("ws-{i}"))).await;
    }
    for i in 0..N {
        let (status, answer) = c.post("/publish", chat("room", &format!("http-{i}"))).await;
        assert_eq!(status, 200, "{answer}");
    }

    for (name, sub) in [("a", &mut sub_a), ("b", &mut sub_b), ("c", &mut sub_c)] {
        let got = bodies(sub, 2 * N).await;
        let ws: Vec<&String> = got.iter().filter(|b| b.starts_with("ws-")).collect();
        let http: Vec<&String> = got.iter().filter(|b| b.starts_with("http-")).collect();
        let want_ws: Vec<String> = (0..N).map(|i| format!("ws-{i}")).collect();
        let want_http: Vec<String> = (0..N).map(|i| format!("http-{i}")).collect();
        assert_eq!(
            ws,
            want_ws.iter().collect::<Vec<_>>(),
            "node {name}: WebSocket publishes"
        );
        assert_eq!(
            http,
            want_http.iter().collect::<Vec<_>>(),
            "node {name}: HTTP publishes"
        );
        sub.expect_silence(300).await;
    }
    let metrics = c.handle.render_metrics();
    assert!(
        metrics.contains(&format!("lhttp_cluster_published_total {}", 2 * N)),
        "{metrics}"
    );
    assert!(metrics.contains("lhttp_cluster_connected 1"), "{metrics}");
    let metrics = a.handle.render_metrics();
    assert!(
        metrics.contains(&format!("lhttp_cluster_received_total {}", 2 * N)),
        "{metrics}"
    );
}

/// A node subscribes in NATS only to channels with local subscribers, under escaped subjects,
/// and drops the subscription when the last local subscriber leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_subscribe_in_nats_only_while_they_have_local_subscribers() {
    let nats = NatsServer::start();
    let a = node(&nats.url()).await;
    let b = node(&nats.url()).await;
    wait_connected(&a, true).await;
    wait_connected(&b, true).await;

    let mut first = a.client().await;
    let mut second = a.client().await;
    first.subscribe("only-a a.b").await;
    second.subscribe("only-a").await;
    wait_interest(&a, "only-a").await;
    wait_interest(&a, "a.b").await;
    // One NATS subscription per channel however many local subscribers; the levels of "a.b"
    // are the subject's levels.
    nats.wait_subject_count("lhttp.ch.only-a", 1).await;
    nats.wait_subject_count("lhttp.ch.a.b", 1).await;
    // Besides the channels, each node holds three fixed subscriptions, whatever its clients
    // do: for replies to its requests (`lhttp.inbox.<node>` and `lhttp.noresp.<node>.>`), and
    // for the node list and cluster-wide disconnects (`lhttp.nodes`).
    let subjects = nats.subjects().await;
    let channels: Vec<&String> = subjects
        .iter()
        .filter(|s| s.starts_with("lhttp.ch."))
        .collect();
    assert_eq!(channels.len(), 2, "{subjects:?}");
    let fixed = subjects
        .iter()
        .filter(|s| s.starts_with("lhttp.inbox."))
        .count()
        + subjects
            .iter()
            .filter(|s| s.starts_with("lhttp.noresp."))
            .count()
        + subjects.iter().filter(|s| *s == "lhttp.nodes").count();
    assert_eq!(fixed, 6, "{subjects:?}");
    assert_eq!(subjects.len(), 8, "{subjects:?}");
    assert!(!b.handle.cluster_subscribed("only-a"));
    assert_eq!(b.handle.cluster_subscription_count(), 0);

    // A publish on b reaches a, although b has no interest of its own.
    let mut publisher = b.client().await;
    publisher.publish("chat", "only-a", "hello").await;
    assert_eq!(body(&first.recv().await), "hello");
    assert_eq!(body(&second.recv().await), "hello");

    // The interest stays while one local subscriber remains, and goes with the last one.
    second.close().await;
    wait_subscribers(&a, "only-a", 1).await;
    nats.wait_subject_count("lhttp.ch.only-a", 1).await;
    first.close().await;
    a.wait_hub_empty().await;
    nats.wait_subject_count("lhttp.ch.only-a", 0).await;
    nats.wait_subject_count("lhttp.ch.a.b", 0).await;
    assert_eq!(a.handle.cluster_subscription_count(), 0);
}

/// nats-server dies: local pub/sub goes on and /healthz says degraded; it comes back on the
/// same port: cross-node delivery resumes, also for a channel subscribed while it was down,
/// with no lhttp restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_lost_and_back_local_delivery_continues_and_cluster_resumes() {
    let mut nats = NatsServer::start();
    let (port, monitor_port) = (nats.port, nats.monitor_port);
    let a = node(&nats.url()).await;
    let b = node(&nats.url()).await;
    wait_connected(&a, true).await;
    wait_connected(&b, true).await;
    let mut pub_a = a.client().await;
    let mut sub_b = b.client().await;
    sub_b.subscribe("room").await;
    wait_interest(&b, "room").await;
    pub_a.publish("chat", "room", "before").await;
    assert_eq!(body(&sub_b.recv().await), "before");
    let (status, health) = healthz(&a).await;
    assert_eq!(status, 200);
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "nats": "connected"})
    );

    nats.stop();
    wait_connected(&a, false).await;
    wait_connected(&b, false).await;
    let (status, health) = healthz(&a).await;
    assert_eq!(status, 503);
    assert_eq!(
        health,
        serde_json::json!({"status": "degraded", "nats": "disconnected"})
    );

    // Local pub/sub on a node does not need NATS, also for a channel subscribed now.
    let mut sub_a = a.client().await;
    sub_a.subscribe("late").await;
    pub_a.publish("chat", "late", "local").await;
    assert_eq!(body(&sub_a.recv().await), "local");
    let metrics = a.handle.render_metrics();
    assert!(metrics.contains("lhttp_cluster_connected 0"), "{metrics}");
    assert!(
        !metrics.contains("lhttp_cluster_dropped_total 0\n"),
        "a publish while NATS is down is counted as dropped: {metrics}"
    );

    let _nats = NatsServer::start_on(port, monitor_port);
    wait_connected(&a, true).await;
    wait_connected(&b, true).await;
    let (status, health) = healthz(&a).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    // b's subscription from before the outage is restored by the NATS client...
    let got = publish_until_received(&mut pub_a, &mut sub_b, "room", "a -> b after restart").await;
    assert!(body(&got).starts_with("probe-"), "{got:?}");
    // ...and a's, made while NATS was down, is made on reconnection.
    let mut pub_b = b.client().await;
    let got = publish_until_received(&mut pub_b, &mut sub_a, "late", "b -> a after restart").await;
    assert!(body(&got).starts_with("probe-"), "{got:?}");
}

/// A node started while NATS is down starts, serves local traffic, reports degraded, and
/// joins the cluster once NATS is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_started_without_nats_runs_degraded_then_joins() {
    let (port, monitor_port) = (free_port(), free_port());
    let url = format!("nats://127.0.0.1:{port}");
    let a = node(&url).await;
    wait_connected(&a, false).await;
    let (status, health) = healthz(&a).await;
    assert_eq!(status, 503);
    assert_eq!(
        health,
        serde_json::json!({"status": "degraded", "nats": "disconnected"})
    );
    let mut sub_a = a.client().await;
    sub_a.subscribe("room").await;
    let mut pub_a = a.client().await;
    pub_a.publish("chat", "room", "local").await;
    assert_eq!(body(&sub_a.recv().await), "local");

    let _nats = NatsServer::start_on(port, monitor_port);
    wait_connected(&a, true).await;
    let (status, health) = healthz(&a).await;
    assert_eq!(status, 200);
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "nats": "connected"})
    );
    let b = node(&url).await;
    wait_connected(&b, true).await;
    let mut pub_b = b.client().await;
    let got = publish_until_received(&mut pub_b, &mut sub_a, "room", "b -> a after start").await;
    assert!(body(&got).starts_with("probe-"), "{got:?}");
}

/// The value of an unlabelled metric.
fn metric(server: &TestServer, name: &str) -> u64 {
    let text = server.handle.render_metrics();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// A node whose NATS receive queue is tiny cannot keep up with a burst: it drops and counts
/// what does not fit, delivers the rest once and in order, and keeps working afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_nats_consumer_is_counted_and_the_node_keeps_working() {
    const N: usize = 2000;
    let nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url).await;
    let b = start_with(Server::builder(config(move |c| {
        c.cluster.nats = vec![url];
        c.cluster.max_pending = 1;
    })))
    .await;
    wait_connected(&a, true).await;
    wait_connected(&b, true).await;
    let mut sub_b = b.client().await;
    sub_b.subscribe("burst").await;
    wait_interest(&b, "burst").await;

    let mut pub_a = a.client().await;
    for i in 0..N {
        pub_a.send(&chat("burst", &i.to_string())).await;
    }
    let mut got = Vec::new();
    while let Ok(message) = tokio::time::timeout(Duration::from_millis(500), sub_b.recv()).await {
        got.push(body(&message).parse::<usize>().expect("a number"));
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "out of order or repeated: {got:?}"
    );
    let published = metric(&a, "lhttp_cluster_published_total") as usize;
    assert_eq!(
        published + metric(&a, "lhttp_cluster_dropped_total") as usize,
        N
    );
    assert_eq!(
        metric(&b, "lhttp_cluster_received_total") as usize,
        got.len()
    );
    if got.len() < published {
        assert!(
            metric(&b, "lhttp_cluster_slow_consumers_total") > 0,
            "{} of {published} arrived and no slow consumer was counted",
            got.len()
        );
    }

    let got = publish_until_received(&mut pub_a, &mut sub_b, "burst", "after the burst").await;
    assert!(body(&got).starts_with("probe-"), "{got:?}");
}

/// Without `[cluster]` nothing changes: /healthz has no NATS field and no cluster metric.
#[tokio::test]
async fn single_node_has_no_cluster() {
    let server = start().await;
    assert_eq!(server.handle.cluster_connected(), None);
    let (status, health) = healthz(&server).await;
    assert_eq!(status, 200);
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    assert!(!server.handle.render_metrics().contains("lhttp_cluster"));
}

/// A request made on node A is answered by a subscriber on node B: the reply crosses back over
/// NATS to A's inbox. A request nobody on any node subscribes to gets 503 from NATS's "no
/// responders"; one whose responder stays silent gets 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_across_nodes() {
    let nats = NatsServer::start();
    let a = node(&nats.url()).await;
    let b = node(&nats.url()).await;
    for server in [&a, &b] {
        wait_connected(server, true).await;
    }
    let mut responder = b.client().await;
    responder.subscribe("svc").await;
    wait_interest(&b, "svc").await;

    let mut requester = a.client().await;
    for i in 0..20 {
        requester
            .send(&format!(
                "LHTTP/1.0 ask\r\npublish:svc\r\nreply-to:\r\nrequest-id:r{i}\r\n\r\nq{i}"
            ))
            .await;
        let request = responder.recv().await;
        assert_eq!(body(&request), format!("q{i}"));
        let reply_to = request.header("reply-to").unwrap();
        responder
            .send(&format!(
                "LHTTP/1.0 answer\r\npublish:{reply_to}\r\n\r\na{i}"
            ))
            .await;
        let answer = requester.recv().await;
        assert_eq!(answer.header("request-id"), Some(format!("r{i}").as_str()));
        assert_eq!(body(&answer), format!("a{i}"));
    }

    // Nobody on any node: NATS says so, and the requester gets 503 (not a 504 much later).
    requester
        .send("LHTTP/1.0 ask\r\npublish:nobody\r\nreply-to:\r\nrequest-id:n1\r\ntimeout:60000\r\n\r\n")
        .await;
    let (status, _, message) = requester.recv_error().await;
    assert_eq!((status, message.header("request-id")), (503, Some("n1")));

    // A silent responder on the other node: 504 at the timeout.
    requester
        .send("LHTTP/1.0 ask\r\npublish:svc\r\nreply-to:\r\nrequest-id:t1\r\ntimeout:300\r\n\r\n")
        .await;
    responder.recv().await;
    let (status, _, _) = requester.recv_error().await;
    assert_eq!(status, 504);
}

/// Queue groups span the cluster: NATS picks one node per message, that node one member, so
/// each message is handled exactly once by the workers of all nodes together; a request made
/// on one node is served by a worker on another and answered across.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_groups_span_nodes_and_each_message_goes_to_one_worker() {
    let nats = NatsServer::start();
    let a = node(&nats.url()).await;
    let b = node(&nats.url()).await;
    for server in [&a, &b] {
        wait_connected(server, true).await;
    }
    let mut workers = Vec::new();
    for server in [&a, &a, &b, &b] {
        let mut worker = server.client().await;
        let (ok, early) = worker
            .request("LHTTP/1.0 sub\r\nsubscribe:jobs\r\nqueue:w\r\ncredit:5\r\n\r\n")
            .await;
        assert_eq!(ok.command(), "ok");
        assert!(early.is_empty());
        workers.push(worker);
    }
    nats.wait_subject_count("lhttp.ch.jobs", 2).await;

    let mut publisher = a.client().await;
    let total = 400;
    for i in 0..total {
        publisher.send(&chat("jobs", &format!("{i}"))).await;
    }
    let mut handles = Vec::new();
    for (w, mut worker) in workers.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(m) = tokio::time::timeout(Duration::from_millis(1500), worker.recv()).await
            {
                got.push(body(&m));
                let id = m.header("delivery-id").unwrap().to_owned();
                worker
                    .send(&format!("LHTTP/1.0 ack\r\nack:{id}\r\n\r\n"))
                    .await;
            }
            (w, got, worker)
        }));
    }
    let mut seen = std::collections::HashMap::new();
    let mut per_node = [0usize; 2];
    let mut workers = Vec::new();
    for handle in handles {
        let (w, got, worker) = handle.await.unwrap();
        per_node[w / 2] += got.len();
        for b in got {
            *seen.entry(b).or_insert(0) += 1;
        }
        workers.push(worker);
    }
    assert_eq!(seen.len(), total, "every message handled");
    assert!(seen.values().all(|&n| n == 1), "exactly once");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "both nodes worked: {per_node:?}"
    );

    // A request made on a node whose workers are all gone is served by the other node's.
    drop(workers.drain(..2));
    nats.wait_subject_count("lhttp.ch.jobs", 1).await;
    let mut requester = a.client().await;
    requester
        .send("LHTTP/1.0 ask\r\npublish:jobs\r\nreply-to:\r\nrequest-id:x1\r\n\r\nwork")
        .await;
    let mut served = false;
    for worker in &mut workers {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(500), worker.recv()).await {
            let reply_to = m.header("reply-to").unwrap().to_owned();
            let id = m.header("delivery-id").unwrap().to_owned();
            worker
                .send(&format!(
                    "LHTTP/1.0 done\r\npublish:{reply_to}\r\nack:{id}\r\n\r\nfrom b"
                ))
                .await;
            served = true;
            break;
        }
    }
    assert!(served, "a worker on node b got the request");
    let answer = requester.recv().await;
    assert_eq!(answer.header("request-id"), Some("x1"));
    assert_eq!(body(&answer), "from b");
}

/// The right to answer crosses nodes with the request: a worker on node B forwards a request
/// made on node A to a worker on A, who answers the requester; a reply from B that is itself a
/// request is answered from A; and replies sprayed at addresses near one seen go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_and_nested_requests_cross_nodes_and_guesses_do_not() {
    let nats = NatsServer::start();
    let a = node(&nats.url()).await;
    let b = node(&nats.url()).await;
    for server in [&a, &b] {
        wait_connected(server, true).await;
    }
    let mut front = b.client().await;
    front.subscribe("front").await;
    wait_interest(&b, "front").await;
    let mut back = a.client().await;
    back.subscribe("back").await;
    wait_interest(&a, "back").await;
    let mut requester = a.client().await;

    requester
        .send("LHTTP/1.0 ask\r\npublish:front\r\nreply-to:\r\nrequest-id:r1\r\n\r\nq")
        .await;
    let request = front.recv().await;
    let address = request.header("reply-to").unwrap().to_owned();
    let (prefix, _) = address.rsplit_once('.').unwrap();
    for n in 0..100 {
        front
            .send(&format!(
                "LHTTP/1.0 forged\r\npublish:{prefix}.{n}\r\n\r\nforged"
            ))
            .await;
    }
    front
        .send(&format!(
            "LHTTP/1.0 ask\r\npublish:back\r\nreply-to:{address}\r\n\r\nq, forwarded"
        ))
        .await;
    let forwarded = back.recv().await;
    assert_eq!(forwarded.header("reply-to"), Some(address.as_str()));
    // The answer is itself a request, made on node A, answered by the requester (also on A).
    back.send(&format!(
        "LHTTP/1.0 which\r\npublish:{address}\r\nreply-to:\r\nrequest-id:n1\r\n\r\nwhich one?"
    ))
    .await;
    let question = requester.recv().await;
    assert_eq!(question.header("request-id"), Some("r1"));
    assert_eq!(body(&question), "which one?");
    let nested = question.header("reply-to").unwrap();
    requester
        .send(&format!(
            "LHTTP/1.0 this\r\npublish:{nested}\r\n\r\nthis one"
        ))
        .await;
    let choice = back.recv().await;
    assert_eq!(choice.header("request-id"), Some("n1"));
    assert_eq!(body(&choice), "this one");
    requester.expect_silence(300).await;
}

/// Transports mix across the cluster. Subscribers on node A over raw TCP and over WebSocket,
/// publishers on node B over a Unix socket and over TLS: each subscriber gets every message of
/// both publishers exactly once, in each publisher's order, and nothing else. Requests cross
/// too: one made over TCP on A is served by a queue-group worker connected over TLS on B, one
/// made over the Unix socket on B is answered by a subscriber connected over WebSocket on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transports_mix_across_nodes_for_pub_sub_and_requests() {
    const N: usize = 200;
    let nats = NatsServer::start();
    let cert = TestCert::new("cluster");
    let a = node_on_every_transport(&nats.url(), &cert, "a").await;
    let b = node_on_every_transport(&nats.url(), &cert, "b").await;
    for node in [&a, &b] {
        wait_connected(&node.server, true).await;
    }

    let mut sub_tcp = a.tcp_client().await;
    let mut sub_ws = a.server.client().await;
    sub_tcp.subscribe("mixed").await;
    sub_ws.subscribe("mixed").await;
    wait_interest(&a.server, "mixed").await;

    let mut pub_unix = b.unix_client().await;
    let mut pub_tls = b.tls_client(&cert).await;
    for i in 0..N {
        pub_unix.send(&chat("mixed", &format!("unix-{i}"))).await;
        pub_tls.send(&chat("mixed", &format!("tls-{i}"))).await;
    }
    let over_tcp = stream_bodies(&mut sub_tcp, 2 * N).await;
    let over_ws = bodies(&mut sub_ws, 2 * N).await;
    for (what, got) in [
        ("TCP subscriber", &over_tcp),
        ("WebSocket subscriber", &over_ws),
    ] {
        assert_all_in_order(got, "unix-", N, what);
        assert_all_in_order(got, "tls-", N, what);
    }
    sub_tcp.expect_silence(300).await;
    sub_ws.expect_silence(300).await;

    // TCP on A -> a queue group's worker over TLS on B.
    let mut worker = b.tls_client(&cert).await;
    let joined = worker
        .request("LHTTP/1.0 sub\r\nsubscribe:jobs\r\nqueue:w\r\ncredit:5\r\n\r\n")
        .await;
    assert_eq!(joined.command(), "ok", "{joined:?}");
    nats.wait_subject_count("lhttp.ch.jobs", 1).await;
    let mut requester = a.tcp_client().await;
    for i in 0..10 {
        requester
            .send(&format!(
                "LHTTP/1.0 ask\r\npublish:jobs\r\nreply-to:\r\nrequest-id:r{i}\r\n\r\nq{i}"
            ))
            .await;
        let job = worker.recv().await;
        assert_eq!(body(&job), format!("q{i}"));
        let (reply_to, id) = (
            job.header("reply-to").unwrap(),
            job.header("delivery-id").unwrap(),
        );
        worker
            .send(&format!(
                "LHTTP/1.0 done\r\npublish:{reply_to}\r\nack:{id}\r\n\r\na{i}"
            ))
            .await;
        let answer = requester.recv().await;
        assert_eq!(answer.header("request-id"), Some(format!("r{i}").as_str()));
        assert_eq!(body(&answer), format!("a{i}"));
    }
    requester.expect_silence(300).await;

    // The Unix socket on B -> a subscriber over WebSocket on A.
    let mut responder = a.server.client().await;
    responder.subscribe("svc").await;
    wait_interest(&a.server, "svc").await;
    let mut asker = b.unix_client().await;
    for i in 0..10 {
        asker
            .send(&format!(
                "LHTTP/1.0 ask\r\npublish:svc\r\nreply-to:\r\nrequest-id:u{i}\r\n\r\nq{i}"
            ))
            .await;
        let request = responder.recv().await;
        assert_eq!(body(&request), format!("q{i}"));
        let reply_to = request.header("reply-to").unwrap();
        responder
            .send(&format!(
                "LHTTP/1.0 answer\r\npublish:{reply_to}\r\n\r\na{i}"
            ))
            .await;
        let answer = asker.recv().await;
        assert_eq!(answer.header("request-id"), Some(format!("u{i}").as_str()));
        assert_eq!(body(&answer), format!("a{i}"));
    }
    asker.expect_silence(300).await;
}

/// A wildcard subscription on one node receives what matches it from the others, through one
/// NATS subscription of the same pattern; a subscriber of both a channel and a pattern that
/// matches it gets one copy per subscription, never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_span_nodes() {
    let nats = NatsServer::start();
    let a = node(&nats.url()).await;
    let b = node(&nats.url()).await;
    wait_connected(&a, true).await;
    wait_connected(&b, true).await;
    let mut temps = a.client().await;
    temps.subscribe("sensor.*.temp").await;
    let mut both = a.client().await;
    both.subscribe("sensor.1.temp sensor.>").await;
    nats.wait_subject_count("lhttp.ch.sensor.*.temp", 1).await;
    nats.wait_subject_count("lhttp.ch.sensor.>", 1).await;
    wait_interest(&a, "sensor.1.temp").await;
    let mut publisher = b.client().await;
    // The first messages may race the new NATS subscriptions: publish until one arrives.
    let got = publish_until_received(&mut publisher, &mut temps, "sensor.1.temp", "t").await;
    assert_eq!(got.header("publish"), Some("sensor.1.temp"));
    // Drain what the probes left, then check exact counts on fresh channels.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while tokio::time::timeout(Duration::from_millis(100), temps.recv())
        .await
        .is_ok()
    {}
    while tokio::time::timeout(Duration::from_millis(100), both.recv())
        .await
        .is_ok()
    {}
    for (channel, text) in [
        ("sensor.2.temp", "19"),
        ("sensor.2.hum", "40"),
        ("sensor.1.temp", "21"),
    ] {
        publisher.publish("reading", channel, text).await;
    }
    for (channel, text) in [("sensor.2.temp", "19"), ("sensor.1.temp", "21")] {
        let m = temps.recv().await;
        assert_eq!(
            (m.header("publish"), body(&m).as_str()),
            (Some(channel), text)
        );
    }
    temps.expect_silence(300).await;
    // `both`: sensor.> matches all three; sensor.1.temp also arrives on its exact
    // subscription: four copies in all, and sensor.1.temp twice.
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = both.recv().await;
        got.push(format!("{}={}", m.header("publish").unwrap(), body(&m)));
    }
    both.expect_silence(300).await;
    got.sort();
    assert_eq!(
        got,
        [
            "sensor.1.temp=21",
            "sensor.1.temp=21",
            "sensor.2.hum=40",
            "sensor.2.temp=19"
        ]
    );
    // The last pattern subscriber gone, the node drops the NATS subscription.
    temps.close().await;
    nats.wait_subject_count("lhttp.ch.sensor.*.temp", 0).await;
}

/// A node whose channels `room.*` have presence with join/leave messages, heartbeats every
/// 100 ms and a 600 ms timeout, joined to the cluster through `nats_url`.
async fn presence_node(nats_url: &str) -> TestServer {
    let url = nats_url.to_owned();
    start_with(Server::builder(config(move |c| {
        c.cluster.nats = vec![url];
        c.cluster.presence_interval_ms = 100;
        c.cluster.presence_timeout_ms = 600;
        c.channels.push(lhttp_server::ChannelOptions {
            pattern: "room.*".into(),
            presence: true,
            join_leave: true,
            ..Default::default()
        });
    })))
    .await
}

/// The sorted infos of `channel`'s members as `client` is told, once they are `want`.
async fn wait_members(client: &mut Client, channel: &str, want: &[&str]) {
    let deadline = Instant::now() + NATS_UP;
    loop {
        let (answer, _) = client
            .request(&format!("LHTTP/1.0 presence\r\nchannel:{channel}\r\n\r\n"))
            .await;
        let members: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
        let mut infos: Vec<String> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["info"].as_str().unwrap().to_owned())
            .collect();
        infos.sort();
        if infos == want {
            assert_eq!(
                answer.header("count"),
                Some(want.len().to_string().as_str())
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members of {channel}: {infos:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `join` or `leave` message `client` receives, skipping anything else.
async fn next_change(client: &mut Client) -> Message {
    loop {
        let m = client.recv().await;
        if m.command() == "join" || m.command() == "leave" {
            return m;
        }
    }
}

#[tokio::test]
async fn presence_spans_nodes_and_a_node_cut_off_from_nats_leaves_no_ghosts() {
    let nats = NatsServer::start();
    let nats_addr: SocketAddr = format!("127.0.0.1:{}", nats.port).parse().unwrap();
    // Node A reaches NATS through a relay the test can silence: a dead network path.
    let relay = relay::Relay::start(nats_addr).await;
    let a = presence_node(&format!("nats://{}", relay.addr)).await;
    let b = presence_node(&nats.url()).await;
    wait_connected(&a, true).await;
    wait_connected(&b, true).await;

    let mut alice = a.client().await;
    alice
        .request("LHTTP/1.0 sub\r\nsubscribe:room.x\r\npresence-info:Alice\r\n\r\n")
        .await;
    let mut watcher = b.client().await;
    watcher
        .request("LHTTP/1.0 sub\r\nsubscribe:room.x\r\npresence-info:Watcher\r\n\r\n")
        .await;
    // Each node lists the other's member (a late starter learns of earlier ones by snapshot).
    wait_members(&mut watcher, "room.x", &["Alice", "Watcher"]).await;
    wait_members(&mut alice, "room.x", &["Alice", "Watcher"]).await;
    let mut other = b.client().await;
    other
        .request(
            "LHTTP/1.0 sub\r\nsubscribe:room.x\r\npresence-info:Bob \"the builder\" \\o/\r\n\r\n",
        )
        .await;
    // An info JSON must escape crosses nodes intact.
    wait_members(
        &mut alice,
        "room.x",
        &["Alice", "Bob \"the builder\" \\o/", "Watcher"],
    )
    .await;
    other.close().await;
    wait_members(&mut alice, "room.x", &["Alice", "Watcher"]).await;

    // A goes silent: B drops its members (with a leave message) after the timeout.
    relay.silence();
    let silenced = Instant::now();
    let left = loop {
        let m = next_change(&mut watcher).await;
        if m.command() == "leave" && body(&m) == "Alice" {
            break m;
        }
    };
    assert_eq!(left.header("publish"), Some("room.x"));
    assert!(
        silenced.elapsed() >= Duration::from_millis(500),
        "dropped after {:?}, before the timeout",
        silenced.elapsed()
    );
    wait_members(&mut watcher, "room.x", &["Watcher"]).await;

    // The path comes back (A reconnects): Alice is listed again, with a join.
    relay.cut();
    loop {
        let m = next_change(&mut watcher).await;
        if m.command() == "join" && body(&m) == "Alice" {
            break;
        }
    }
    wait_members(&mut watcher, "room.x", &["Alice", "Watcher"]).await;
}

// ---------------------------------------------------------------------------------------------
// The server API across the cluster

#[tokio::test]
async fn the_server_api_lists_every_node_and_disconnects_a_user_on_all_of_them() {
    const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";
    let nats = NatsServer::start();
    let api_node = |url: String| {
        start_with(Server::builder(config(move |c| {
            c.cluster.nats = vec![url];
            c.cluster.presence_interval_ms = 100;
            c.cluster.presence_timeout_ms = 600;
            c.auth.hs256_secret = Some(SECRET.into());
        })))
    };
    let a = api_node(nats.url()).await;
    let mut b = api_node(nats.url()).await;
    let mut ann_on_b = connect_as(&b, "ann").await;
    let mut bob_on_b = connect_as(&b, "bob").await;
    ann_on_b.subscribe("news").await;
    bob_on_b.subscribe("news").await;

    // Node a lists itself first, then b, with b's own figures.
    let b_node = serde_json::from_str::<serde_json::Value>(&b.get("/server/info").await.1).unwrap()
        ["node"]
        .clone();
    assert!(b_node.is_string(), "{b_node}");
    let deadline = Instant::now() + NATS_UP;
    let b_status = loop {
        let (status, text) = a.get("/server/info").await;
        assert_eq!(status, 200, "{text}");
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        let nodes = info["cluster"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            nodes.first().map(|n| &n["node"]),
            Some(&info["node"]),
            "{info}"
        );
        let listed = nodes.iter().find(|n| n["node"] == b_node).cloned();
        match listed {
            Some(node) if node["connections"] == 2 => break node,
            _ => {
                assert!(Instant::now() < deadline, "node b not listed by a: {info}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(b_status["subscriptions"], 2, "{b_status}");
    assert_eq!(b_status["version"], env!("CARGO_PKG_VERSION"), "{b_status}");

    // Disconnecting ann through node a closes her connection on node b; bob stays.
    let (status, text) = a
        .post(
            "/server/disconnect",
            serde_json::json!({"user": "ann"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"disconnected": 0, "cluster": true})
    );
    assert_eq!(
        ann_on_b.recv_close().await,
        (4001, "disconnected by the server".into())
    );
    b.wait_connections(1).await;
    let (status, _) = a.post("/publish", chat("news", "still here")).await;
    assert_eq!(status, 200);
    assert_eq!(body(&bob_on_b.recv().await), "still here");

    // A node that stops is dropped from the list after the presence timeout.
    bob_on_b.close().await;
    b.handle.shutdown();
    b.stopped().await;
    let deadline = Instant::now() + NATS_UP;
    loop {
        let (_, text) = a.get("/server/info").await;
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        if info["cluster"]["nodes"].as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "a still lists b: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
