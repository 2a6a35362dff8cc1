//! `lhttp request`: the real binary asks, a Rust SDK worker answers.

mod common;

use common::{lhttp, run, start};
use lhttp_client::{Client, Reply};

#[tokio::test]
async fn request_prints_the_workers_answer() {
    let server = start().await;
    let url = server.url();
    let worker = Client::connect(&url).await.expect("connect");
    let serving = {
        let worker = worker.clone();
        tokio::spawn(async move {
            worker
                .serve("greet", "workers", 1, |request| async move {
                    let name = String::from_utf8_lossy(request.body()).into_owned();
                    Reply::ok(format!("hello {name}")).command("greeting")
                })
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while server.handle.queue_member_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker did not join"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let done = run(lhttp(&["--url", &url, "request", "greet", "ann"]), b"").await;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(
        done.stdout
            .starts_with("LHTTP/1.0 greeting\nstatus:200\nrequest-id:"),
        "{done:?}"
    );
    assert!(done.stdout.ends_with("\n\nhello ann\n\n"), "{done:?}");
    serving.abort();
}

#[tokio::test]
async fn request_with_no_responder_exits_1_with_503() {
    let server = start().await;
    let url = server.url();
    let done = run(lhttp(&["--url", &url, "request", "nobody", "x"]), b"").await;
    assert_eq!(done.code, Some(1), "{done:?}");
    assert!(
        done.stdout.starts_with("LHTTP/1.0 error\nstatus:503\n"),
        "{done:?}"
    );
    assert!(
        done.stderr.starts_with("lhttp: server answered 503"),
        "{done:?}"
    );
}
