//! The Rust SDK's requests and queue-group workers against a real server.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{WAIT, start, start_on};
use lhttp_client::{Client, ConnectionState, Error, Reply};

async fn client(addr: std::net::SocketAddr) -> Client {
    Client::builder(format!("ws://{addr}/"))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect()
        .await
        .expect("connects")
}

#[tokio::test]
async fn call_and_serve_round_trip() {
    let server = start().await;
    let worker = client(server.addr).await;
    let serving = {
        let worker = worker.clone();
        tokio::spawn(async move {
            worker
                .serve("math.double", "workers", 4, |request| async move {
                    let n: u64 = std::str::from_utf8(request.body())
                        .unwrap()
                        .parse()
                        .unwrap();
                    Reply::ok((n * 2).to_string()).header("x-by", "worker")
                })
                .await
        })
    };
    wait_for_group(&server).await;
    let caller = client(server.addr).await;
    for n in [1u64, 21, 500] {
        let answer = caller.call("math.double", n.to_string()).await.unwrap();
        assert_eq!(answer.body().as_ref(), (n * 2).to_string().as_bytes());
        assert_eq!(answer.header("status"), Some("200"));
        assert_eq!(answer.header("x-by"), Some("worker"));
    }
    serving.abort();
}

#[tokio::test]
async fn call_errors_are_typed() {
    let server = start().await;
    let caller = client(server.addr).await;
    match caller.call("nobody", "x").await {
        Err(Error::Server { status: 503, .. }) => {}
        other => panic!("expected 503, got {other:?}"),
    }
    // A member that never answers: the server's 504 arrives before the client gives up.
    let silent = client(server.addr).await;
    let _held = silent.join_queue("slow", "g", 1).await.unwrap();
    let answer = caller
        .call_with(
            "slow",
            "request",
            std::iter::empty::<(&str, &str)>(),
            "x",
            Duration::from_millis(300),
        )
        .await;
    match answer {
        Err(Error::Server { status: 504, .. }) => {}
        other => panic!("expected 504, got {other:?}"),
    }
}

#[tokio::test]
async fn three_workers_share_the_calls_exactly_once() {
    let server = start().await;
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let mut workers = Vec::new();
    for w in 0..3 {
        let worker = client(server.addr).await;
        let seen = seen.clone();
        workers.push(tokio::spawn(async move {
            worker
                .serve("jobs", "pool", 2, move |request| {
                    let seen = seen.clone();
                    async move {
                        let body = String::from_utf8(request.body().to_vec()).unwrap();
                        *seen.lock().unwrap().entry(body.clone()).or_default() += 1;
                        Reply::ok(format!("{w}:{body}"))
                    }
                })
                .await
        }));
    }
    wait_for_members(&server, 3).await;
    let caller = client(server.addr).await;
    let calls = (0..300).map(|i| {
        let caller = caller.clone();
        async move { (i, caller.call("jobs", i.to_string()).await) }
    });
    let mut by_worker = [0usize; 3];
    for (i, answer) in futures_util::future::join_all(calls).await {
        let answer = answer.unwrap();
        let text = String::from_utf8(answer.body().to_vec()).unwrap();
        let (w, body) = text.split_once(':').unwrap();
        assert_eq!(body, i.to_string());
        by_worker[w.parse::<usize>().unwrap()] += 1;
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|&n| n == 1), "each handled once");
    assert!(by_worker.iter().all(|&n| n > 0), "shared: {by_worker:?}");
    for w in workers {
        w.abort();
    }
}

#[tokio::test]
async fn serve_until_drains_before_returning() {
    let server = start().await;
    let worker = client(server.addr).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let worker = worker.clone();
        let handled = handled.clone();
        tokio::spawn(async move {
            worker
                .serve_until(
                    "work",
                    "g",
                    2,
                    move |_| {
                        let handled = handled.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            handled.fetch_add(1, Ordering::SeqCst);
                            Reply::ok("done")
                        }
                    },
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await
        })
    };
    wait_for_group(&server).await;
    let caller = client(server.addr).await;
    let calls = tokio::spawn({
        let caller = caller.clone();
        async move { futures_util::future::join_all((0..2).map(|_| caller.call("work", "x"))).await }
    });
    // Both calls are in the worker's hands when it is told to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, serving)
        .await
        .expect("serve_until returns after draining")
        .unwrap()
        .unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 2);
    for answer in calls.await.unwrap() {
        assert_eq!(answer.unwrap().body().as_ref(), b"done");
    }
    wait_for_members(&server, 0).await;
}

#[tokio::test]
async fn a_worker_rejoins_its_group_after_a_reconnect() {
    let server = start().await;
    let addr = server.addr;
    let worker = client(addr).await;
    let serving = {
        let worker = worker.clone();
        tokio::spawn(async move {
            worker
                .serve(
                    "echo",
                    "g",
                    1,
                    |m| async move { Reply::ok(m.body().clone()) },
                )
                .await
        })
    };
    wait_for_group(&server).await;
    let mut states = worker.state_changes();
    server.stop().await;
    let server = start_on(addr).await;
    tokio::time::timeout(WAIT, async {
        loop {
            states.changed().await.unwrap();
            if *states.borrow() == ConnectionState::Connected {
                break;
            }
        }
    })
    .await
    .expect("reconnected");
    let caller = client(addr).await;
    let answer = caller.call("echo", "again").await.unwrap();
    assert_eq!(answer.body().as_ref(), b"again");
    drop(server);
    serving.abort();
}

async fn wait_for_group(server: &common::TestServer) {
    wait_for_members(server, 1).await;
}

/// Waits until the server has `n` queue-group members.
async fn wait_for_members(server: &common::TestServer, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let members = server.handle.queue_member_count();
        if members == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} members, have {members}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
