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

#[tokio::test]
async fn bench_requests_checks_every_answer_over_websocket_and_the_gateway() {
    let mut config = lhttp_server::Config::default();
    config.gateway.push(lhttp_server::GatewayRoute {
        path: "/api/".into(),
        channel: "bench.requests".into(),
        queue: "bench".into(),
        timeout_ms: 10_000,
        at_least_once: false,
    });
    let server = common::start_with(config).await;
    let url = server.url();
    let http = format!("http://{}/api/echo", server.addr);
    // Over WebSocket on a channel of its own: clients may not publish on a gateway's channel.
    for extra in [vec!["--channel", "bench.ws"], vec!["--http", http.as_str()]] {
        let mut args = vec![
            "--url", &url, "bench", "requests", "-n", "400", "-k", "16", "-w", "2", "--credit",
            "4", "--json",
        ];
        args.extend(extra.iter().copied());
        let done = run(lhttp(&args), b"").await;
        assert_eq!(done.code, Some(0), "{extra:?}: {done:?}");
        let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).unwrap();
        assert_eq!(report["answered"], 400, "{report}");
        assert_eq!(report["corrupted"], 0, "{report}");
        assert_eq!(report["duplicated"], 0, "{report}");
        assert_eq!(report["unanswered"], 0, "{report}");
        assert!(report["requests_per_sec"].as_f64().unwrap() > 0.0);
    }
    // Nobody serves the channel: every request is answered 503, and the run says so (exit 1).
    let done = run(
        lhttp(&[
            "--url",
            &url,
            "bench",
            "requests",
            "-n",
            "20",
            "-w",
            "0",
            "--channel",
            "nobody",
            "--json",
        ]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(1), "{done:?}");
    let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).unwrap();
    assert_eq!(report["errors"]["503"], 20, "{report}");
}

#[tokio::test]
async fn serve_answers_requests_from_a_terminal_and_drains_on_sigterm() {
    let server = start().await;
    let url = server.url();
    let mut worker = common::spawn(lhttp(&[
        "--url",
        &url,
        "serve",
        "users.lookup",
        "--queue",
        "w",
        "--reply",
        "ann",
    ]));
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while server.handle.queue_member_count() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "serve did not join");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let done = run(
        lhttp(&["--url", &url, "request", "users.lookup", "id=7"]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(done.stdout.ends_with("\n\nann\n\n"), "{done:?}");
    // The worker printed the request it answered.
    let mut printed = Vec::new();
    loop {
        let line = worker.line().await;
        let end = line == "id=7";
        printed.push(line);
        if end {
            break;
        }
    }
    assert_eq!(printed[0], "LHTTP/1.0 request", "{printed:?}");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(common::WAIT, worker.child.wait())
        .await
        .expect("serve stops on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}");
}
