//! What a client can make the server hold on behalf of queue groups and multi-channel
//! publishes, and what it is told at each bound.

mod common;

use std::time::Duration;

use common::{Client, TestServer, WAIT, config, start_with};
use lhttp_server::{GatewayRoute, Server, proto::Message};

/// 60 KB bodies: two fit a 128 KiB share (each job is charged its size and 256 bytes), three
/// do not.
const BODY: usize = 60_000;
const SHARE: usize = 128 * 1024;

fn big_body() -> String {
    "x".repeat(BODY)
}

/// A server whose publishers may each hold `SHARE` bytes of queue work, `total` in all.
async fn server_with_share(
    total: usize,
    change: impl FnOnce(&mut lhttp_server::Config),
) -> TestServer {
    start_with(Server::builder(config(|c| {
        c.queues.max_queued_bytes_per_publisher = SHARE;
        c.queues.max_queued_bytes = total;
        change(c);
    })))
    .await
}

/// Joins group `g` of `jobs` with credit 1 (and never acknowledges unless told).
async fn idle_worker(server: &TestServer) -> Client {
    let mut worker = server.client().await;
    let (answer, _) = worker
        .request("LHTTP/1.0 sub\r\nsubscribe:jobs\r\nqueue:g\r\ncredit:1\r\n\r\n")
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    worker
}

/// Publishes a 60 KB job and returns the server's answer to it (`ok` or `error`).
async fn publish_job(publisher: &mut Client) -> Message {
    let (answer, _) = publisher
        .request(&format!(
            "LHTTP/1.0 job\r\npublish:jobs\r\n\r\n{}",
            big_body()
        ))
        .await;
    answer
}

fn status(answer: &Message) -> Option<u16> {
    answer.header("status").and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn a_publisher_over_its_share_of_queued_bytes_gets_429_and_others_still_queue() {
    let server = server_with_share(1024 * 1024, |_| {}).await;
    let mut worker = idle_worker(&server).await;
    let mut attacker = server.client().await;
    // One held by the worker, one waiting: the attacker's share is used up.
    for _ in 0..2 {
        assert_eq!(publish_job(&mut attacker).await.command(), "ok");
    }
    let refused = publish_job(&mut attacker).await;
    assert_eq!(refused.command(), "error", "{refused:?}");
    assert_eq!(status(&refused), Some(429), "{refused:?}");
    assert!(server.metric("queue_byte_limit_refusals_total") >= 1);

    // Another publisher has its own share.
    let mut other = server.client().await;
    assert_eq!(publish_job(&mut other).await.command(), "ok");

    // The worker acknowledges the first job and gets the attacker's second: the attacker now
    // holds one job, and may queue one more.
    let first = worker.recv().await;
    let id = first.header("delivery-id").unwrap().to_owned();
    worker
        .send(&format!("LHTTP/1.0 ack\r\nack:{id}\r\n\r\n"))
        .await;
    let second = worker.recv().await;
    assert_eq!(second.body().len(), BODY);
    assert_eq!(publish_job(&mut attacker).await.command(), "ok");
}

#[tokio::test]
async fn the_server_wide_budget_answers_503_to_every_publisher() {
    // Room for three jobs over the server, two per publisher.
    let server = server_with_share(3 * (BODY + 1024), |_| {}).await;
    let _worker = idle_worker(&server).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    for _ in 0..2 {
        assert_eq!(publish_job(&mut a).await.command(), "ok");
    }
    assert_eq!(publish_job(&mut b).await.command(), "ok");
    let refused = publish_job(&mut b).await;
    assert_eq!(
        (refused.command(), status(&refused)),
        ("error", Some(503)),
        "{refused:?}"
    );
    assert!(server.metric("queued_bytes") >= 3 * BODY as u64);
}

#[tokio::test]
async fn a_plain_message_a_full_group_refuses_is_answered_503_not_dropped() {
    let server = start_with(Server::builder(config(|c| c.queues.max_queued = 1))).await;
    let _worker = idle_worker(&server).await;
    let mut publisher = server.client().await;
    for expected in ["ok", "ok"] {
        let (answer, _) = publisher
            .request("LHTTP/1.0 job\r\npublish:jobs\r\n\r\nwork")
            .await;
        assert_eq!(answer.command(), expected, "{answer:?}");
    }
    // One held, one waiting: the third does not fit, and its publisher is told.
    let (answer, _) = publisher
        .request("LHTTP/1.0 job\r\npublish:jobs\r\n\r\nwork")
        .await;
    assert_eq!(
        (answer.command(), status(&answer)),
        ("error", Some(503)),
        "{answer:?}"
    );
}

#[tokio::test]
async fn waiting_work_expires_on_time_untouched_and_gives_its_share_back() {
    let server = server_with_share(1024 * 1024, |c| c.queues.max_wait_ms = 300).await;
    let _worker = idle_worker(&server).await;
    let mut publisher = server.client().await;
    for _ in 0..2 {
        assert_eq!(publish_job(&mut publisher).await.command(), "ok");
    }
    assert_eq!(status(&publish_job(&mut publisher).await), Some(429));
    // Nobody touches the group: the waiting job still expires, on the group's own clock.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("queue_expired_total") < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiting work did not expire"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only the job the worker holds is still charged.
    assert_eq!(publish_job(&mut publisher).await.command(), "ok");
}

#[tokio::test]
async fn gateway_requests_waiting_for_a_worker_are_bounded_and_refused_at_once() {
    let mut config = lhttp_server::Config::default();
    config.queues.max_queued_bytes_per_publisher = SHARE;
    // Nobody serves the route: every request waits for a worker, up to a long timeout.
    config.gateway.push(GatewayRoute {
        path: "/api/".into(),
        channel: "http.api".into(),
        queue: "workers".into(),
        timeout_ms: 60_000,
        at_least_once: false,
    });
    let server = start_with(Server::builder(config)).await;
    let http = reqwest::Client::new();
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let request = http.post(server.http("/api/x")).body(big_body());
        waiting.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    }
    // Two fit and wait; the third is answered long before the route's timeout.
    let first = tokio::time::timeout(WAIT, waiting.join_next())
        .await
        .expect("a request over the bound is answered at once")
        .unwrap()
        .unwrap()
        .unwrap();
    // The client's own share is full, not the server: 429, "slow down".
    assert_eq!(first, 429);
    // Another address has a share of its own: its request waits for a worker too.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let request = other.post(server.http("/api/x")).body(big_body());
    waiting.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiting.join_next())
            .await
            .is_err(),
        "the requests that fit keep waiting for a worker"
    );
    waiting.abort_all();
}

#[tokio::test]
async fn a_message_to_more_channels_than_the_limit_is_refused_and_published_nowhere() {
    let server = start_with(Server::builder(config(|c| {
        c.limits.max_publish_channels = 8
    })))
    .await;
    let mut subscriber = server.client().await;
    subscriber.subscribe("c0").await;
    let mut publisher = server.client().await;
    let channels = |n: usize| {
        (0..n)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (answer, _) = publisher
        .request(&format!(
            "LHTTP/1.0 chat\r\npublish:{}\r\n\r\nhi",
            channels(9)
        ))
        .await;
    assert_eq!(
        (answer.command(), status(&answer)),
        ("error", Some(400)),
        "{answer:?}"
    );
    subscriber.expect_silence(200).await;
    let (answer, _) = publisher
        .request(&format!(
            "LHTTP/1.0 chat\r\npublish:{}\r\n\r\nhi",
            channels(8)
        ))
        .await;
    assert_eq!(answer.command(), "ok", "{answer:?}");
    assert_eq!(subscriber.recv().await.header("publish"), Some("c0"));
}

#[tokio::test]
async fn http_publishers_share_one_account_and_get_429_beyond_it() {
    let server = server_with_share(1024 * 1024, |_| {}).await;
    let _worker = idle_worker(&server).await;
    let job = format!("LHTTP/1.0 job\r\npublish:jobs\r\n\r\n{}", big_body());
    for _ in 0..2 {
        let (status, body) = server.post("/publish", job.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.post("/publish", job.clone()).await;
    assert_eq!(status, 429, "{body}");
    // A WebSocket publisher is not held back by the HTTP account.
    let mut client = server.client().await;
    assert_eq!(publish_job(&mut client).await.command(), "ok");
}

#[tokio::test]
async fn a_plain_message_queued_behind_a_long_request_still_expires_on_time() {
    let server = start_with(Server::builder(config(|c| c.queues.max_wait_ms = 300))).await;
    let _worker = idle_worker(&server).await;
    let mut publisher = server.client().await;
    let (held, _) = publisher
        .request("LHTTP/1.0 job\r\npublish:jobs\r\n\r\nheld")
        .await;
    assert_eq!(held.command(), "ok");
    // The group's timer is armed for this request's deadline, a minute away...
    publisher
        .send(
            "LHTTP/1.0 do\r\npublish:jobs\r\nreply-to:\r\nrequest-id:slow\r\ntimeout:60000\r\n\r\n",
        )
        .await;
    // ...and must still drop this one after 300 ms.
    let (queued, _) = publisher
        .request("LHTTP/1.0 job\r\npublish:jobs\r\n\r\nwaits")
        .await;
    assert_eq!(queued.command(), "ok");
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("queue_expired_total") < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plain message waited for the request's deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
