//! The real `lhttp` binary against a real in-process server.

mod common;

use common::{WAIT, free_port_url, lhttp, run, spawn, start, start_with};
use futures_util::StreamExt;
use lhttp_client::{Client, Message};

/// A message as a publisher without request-id sends it, so that the bytes are predictable.
fn chat(channel: &str, body: &str) -> Message {
    Message::builder("chat")
        .header("from", "ann")
        .header("publish", channel.to_owned())
        .body(body.to_owned())
        .build()
        .unwrap()
}

#[tokio::test]
async fn sub_prints_each_message_readably() {
    let server = start().await;
    let url = server.url();
    let mut sub = spawn(lhttp(&["--url", &url, "sub", "room", "other"]));
    server.wait_subscribers("room", 1).await;
    server.wait_subscribers("other", 1).await;

    let publisher = Client::connect(&url).await.expect("connect");
    publisher.send(chat("room", "hello")).await.expect("send");
    publisher
        .send(chat("other", "two\nlines"))
        .await
        .expect("send");

    let mut lines = Vec::new();
    for _ in 0..13 {
        lines.push(sub.line().await);
    }
    assert_eq!(
        lines,
        [
            "LHTTP/1.0 chat",
            "from:ann",
            "publish:room",
            "",
            "hello",
            "",
            "LHTTP/1.0 chat",
            "from:ann",
            "publish:other",
            "",
            "two",
            "lines",
            "",
        ]
    );
    sub.child.kill().await.expect("kill");
}

#[tokio::test]
async fn sub_without_reconnect_exits_when_the_server_stops() {
    let server = start().await;
    let url = server.url();
    let mut sub = spawn(lhttp(&["--url", &url, "sub", "--no-reconnect", "room"]));
    server.wait_subscribers("room", 1).await;
    server.handle.shutdown();
    let status = tokio::time::timeout(WAIT, sub.child.wait())
        .await
        .expect("lhttp exits")
        .expect("exit status");
    assert_eq!(status.code(), Some(3));
    let mut stderr = String::new();
    let mut pipe = sub.child.stderr.take().expect("stderr");
    tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr)
        .await
        .expect("read stderr");
    assert_eq!(stderr, "lhttp: connection to the server lost\n");
}

#[tokio::test]
async fn sub_prints_json_lines() {
    let server = start().await;
    let url = server.url();
    let mut sub = spawn(lhttp(&["--url", &url, "--format", "json", "sub", "room"]));
    server.wait_subscribers("room", 1).await;

    server
        .handle
        .publish(&chat("room", "hé \"quoted\""))
        .expect("publish");
    let binary = Message::builder("blob")
        .header("publish", "room")
        .body(vec![0xff, 0xfe, 0x00])
        .build()
        .unwrap();
    server.handle.publish(&binary).expect("publish");

    assert_eq!(
        sub.line().await,
        r#"{"command":"chat","headers":[["from","ann"],["publish","room"]],"body":"hé \"quoted\""}"#
    );
    assert_eq!(
        sub.line().await,
        r#"{"command":"blob","headers":[["publish","room"]],"body_base64":"//4A"}"#
    );
    sub.child.kill().await.expect("kill");
}

#[tokio::test]
async fn pub_delivers_to_an_sdk_subscriber() {
    let server = start().await;
    let url = server.url();
    let client = Client::connect(&url).await.expect("connect");
    let mut room = client.subscribe(["room"]).await.expect("subscribe");

    let done = run(
        lhttp(&[
            "--url",
            &url,
            "pub",
            "-c",
            "note",
            "-H",
            "from:cli",
            "-H",
            "mood: happy",
            "room",
            "hi there",
        ]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert_eq!(done.stdout, "", "pub prints nothing on success");
    let message = tokio::time::timeout(WAIT, room.next())
        .await
        .expect("a delivery")
        .expect("subscription open");
    assert_eq!(message.command(), "note");
    assert_eq!(message.header("from"), Some("cli"));
    assert_eq!(message.header("mood"), Some("happy"));
    assert_eq!(&message.body()[..], b"hi there");

    // `-` reads the body from stdin, byte for byte.
    let done = run(
        lhttp(&["--url", &url, "pub", "room", "-"]),
        b"line one\nline two\n",
    )
    .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let message = tokio::time::timeout(WAIT, room.next())
        .await
        .expect("a delivery")
        .expect("subscription open");
    assert_eq!(message.command(), "chat");
    assert_eq!(&message.body()[..], b"line one\nline two\n");
}

#[tokio::test]
async fn pub_to_an_invalid_channel_fails_with_the_reason() {
    let server = start().await;
    let done = run(
        lhttp(&["--url", &server.url(), "pub", "bad>name", "x"]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(1), "{done:?}");
    assert_eq!(done.stdout, "");
    assert_eq!(
        done.stderr.trim_end(),
        "lhttp: server answered 400: channel names may not contain whitespace, control \
         characters, '*' or '>'"
    );
}

#[tokio::test]
async fn send_prints_the_answer() {
    let server = start().await;
    let url = server.url();
    let done = run(
        lhttp(&["--url", &url, "send", "-c", "sub", "-H", "subscribe:room"]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(
        done.stdout
            .starts_with("LHTTP/1.0 ok\nstatus:200\nrequest-id:"),
        "{done:?}"
    );

    let done = run(
        lhttp(&["--url", &url, "send", "-c", "no-such-command"]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(1), "{done:?}");
    assert!(
        done.stdout.starts_with("LHTTP/1.0 error\nstatus:404\n"),
        "{done:?}"
    );
    assert!(
        done.stderr.starts_with("lhttp: server answered 404"),
        "{done:?}"
    );
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let url = free_port_url();
    let done = run(lhttp(&["--url", &url, "pub", "room", "x"]), b"").await;
    assert_eq!(done.code, Some(3), "{done:?}");
    assert!(
        done.stderr
            .starts_with(&format!("lhttp: cannot connect to {url}")),
        "{done:?}"
    );
    assert_eq!(done.stderr.lines().count(), 1, "{done:?}");

    let done = run(lhttp(&["--url", "ftp://127.0.0.1:1/", "sub", "room"]), b"").await;
    assert_ne!(done.code, Some(0));
    assert!(
        done.stderr
            .contains("expected ws://, wss://, tcp://host:port"),
        "{done:?}"
    );
}

#[tokio::test]
async fn help_documents_the_exit_codes() {
    let done = run(lhttp(&["--help"]), b"").await;
    assert_eq!(done.code, Some(0));
    assert!(done.stdout.contains("Exit codes:"), "{}", done.stdout);
    assert!(done.stdout.contains("3  the server cannot be reached"));
    // The environment variable is named, not a stray `=` with its (empty) value.
    assert!(done.stdout.contains("[env: LHTTP_URL]"), "{}", done.stdout);
    assert!(!done.stdout.contains("LHTTP_URL="), "{}", done.stdout);
}

#[tokio::test]
async fn a_command_line_that_cannot_work_exits_2_with_one_message() {
    for args in [
        &["--url", "bogus://x", "sub", "room"][..],
        &["--url", "ws://127.0.0.1:9", "--timeout", "0", "sub", "room"],
        &[
            "--url",
            "ws://127.0.0.1:9",
            "bench",
            "latency",
            "--duration",
            "0",
        ],
        &[
            "--url",
            "ws://127.0.0.1:9",
            "bench",
            "throughput",
            "--duration",
            "0",
        ],
        &[
            "--url",
            "ws://127.0.0.1:9",
            "bench",
            "chat",
            "--duration",
            "0",
        ],
        &["--no-such-flag"],
    ] {
        let done = run(lhttp(args), b"").await;
        assert_eq!(done.code, Some(2), "{args:?}: {done:?}");
        let messages = done
            .stderr
            .lines()
            .filter(|l| l.starts_with("lhttp: ") || l.starts_with("error: "))
            .count();
        assert_eq!(messages, 1, "{args:?}: one message: {}", done.stderr);
        // A number of seconds the tool refuses is named in the message.
        for option in ["--timeout", "--duration"] {
            if args.contains(&option) {
                assert!(
                    done.stderr
                        .contains(&format!("{option} must be a positive number of seconds")),
                    "{args:?}: {}",
                    done.stderr
                );
            }
        }
    }
}

#[tokio::test]
async fn scripted_session_from_stdin() {
    let server = start().await;
    let mut command = lhttp(&[]);
    // The URL comes from the environment this time.
    command.env("LHTTP_URL", server.url());
    let script = "\
# comments and blank lines are skipped

subscribe room
publish room hello from the script
send note -H publish:room -H k:v body text
unsubscribe room
publish room nobody hears this
bogus
";
    let done = run(command, script.as_bytes()).await;
    // The unknown command fails the run, after everything else ran.
    assert_eq!(done.code, Some(1), "{done:?}");
    assert!(
        done.stderr.contains("line 8: unknown command \"bogus\""),
        "{done:?}"
    );
    assert!(
        done.stdout
            .contains("LHTTP/1.0 chat\npublish:room\n\nhello from the script\n"),
        "{done:?}"
    );
    assert!(
        done.stdout.contains("\n\nhello from the script\n"),
        "{done:?}"
    );
    // The message sent with `send` arrives (it publishes to room) and its answer is printed.
    assert!(
        done.stdout
            .contains("LHTTP/1.0 note\npublish:room\nk:v\n\nbody text\n"),
        "{done:?}"
    );
    assert!(done.stdout.contains("\n\nbody text\n"), "{done:?}");
    assert!(
        done.stdout.contains("LHTTP/1.0 ok\nstatus:200\n"),
        "{done:?}"
    );
    assert!(!done.stdout.contains("nobody hears this"), "{done:?}");
    // Printed in the order the server sent them: delivery of the publish, delivery of the
    // sent message, then the answer to it.
    let order: Vec<usize> = ["hello from the script", "body text", "LHTTP/1.0 ok"]
        .iter()
        .map(|text| done.stdout.find(text).expect("printed"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    server.wait_subscribers("room", 0).await;
}

#[tokio::test]
async fn bench_throughput_checks_every_delivery() {
    let server = common::start_for_bench().await;
    let done = run(
        lhttp(&[
            "--url",
            &server.url(),
            "bench",
            "throughput",
            "-n",
            "3000",
            "--subscribers",
            "3",
            "--size",
            "100",
            "--json",
        ]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).expect("JSON report");
    assert_eq!(report["scenario"], "throughput", "{report}");
    assert_eq!(report["deliveries"], 9000, "{report}");
    for field in ["lost", "duplicated", "out_of_order", "corrupted"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    assert!(
        report["delivered_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // The subscribers left: nothing stays behind in the server.
    server.wait_subscribers("bench", 0).await;
}

#[tokio::test]
async fn bench_connections_reports_memory_per_connection() {
    let server = common::start_for_bench().await;
    // The server runs in this test process, so its memory is this process's.
    let pid = std::process::id().to_string();
    let done = run(
        lhttp(&[
            "--url",
            &server.url(),
            "bench",
            "connections",
            "-n",
            "200",
            "--channels",
            "10",
            "--pid",
            &pid,
            "--json",
        ]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).expect("JSON report");
    assert_eq!(report["scenario"], "connections", "{report}");
    assert_eq!(report["connections"], 200, "{report}");
    assert!(report["rss_after_kib"].as_u64().unwrap() > 0, "{report}");
    assert!(report["kib_per_connection"].is_number(), "{report}");
    // The kernel's socket memory is reported beside it (idle sockets may hold no buffer pages,
    // so the figure itself may be 0).
    for field in ["kernel_tcp_before_kib", "kernel_tcp_after_kib"] {
        assert!(report[field].is_u64(), "{field}: {report}");
    }
    assert!(
        report["kernel_tcp_kib_per_connection"].is_number(),
        "{report}"
    );
    // Each connection was confirmed subscribed (the bench fails otherwise); none is left after.
    server.wait_subscribers("idle-0", 0).await;
}

#[tokio::test]
async fn bench_latency_reports_percentiles_and_checks_every_delivery() {
    let server = common::start_for_bench().await;
    let done = run(
        lhttp(&[
            "--url",
            &server.url(),
            "bench",
            "latency",
            "--rate",
            "500",
            "--duration",
            "1",
            "--json",
        ]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).expect("JSON report");
    assert_eq!(report["scenario"], "latency", "{report}");
    assert_eq!(report["published"], 500, "{report}");
    assert_eq!(report["deliveries"], 500, "{report}");
    for field in ["lost", "duplicated", "out_of_order", "corrupted"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    let us = |field: &str| report[field].as_f64().expect(field);
    assert!(us("p50_us") > 0.0, "{report}");
    assert!(us("p50_us") <= us("p90_us"), "{report}");
    assert!(us("p90_us") <= us("p99_us"), "{report}");
    assert!(us("p99_us") <= us("p999_us"), "{report}");
    assert!(us("p999_us") <= us("max_us"), "{report}");
    // A sanity check of the pacing, not a performance assertion.
    let rate = us("achieved_rate");
    assert!((250.0..=750.0).contains(&rate), "{report}");
    server.wait_subscribers("bench", 0).await;
}

/// A server that refuses the bench's POSTs (an API key it does not have) ends the run at once
/// with the server's answer, not with a warm-up that waits for a probe that never comes.
#[tokio::test]
async fn bench_http_publish_reports_a_refusing_server() {
    let mut config = lhttp_server::Config::default();
    config.server.api_key = Some("0123456789abcdef-key".into());
    let server = start_with(config).await;
    let done = run(
        lhttp(&[
            "--url",
            &server.url(),
            "bench",
            "http-publish",
            "--count",
            "10",
            "--json",
        ]),
        b"",
    )
    .await;
    assert_ne!(done.code, Some(0), "{done:?}");
    assert!(done.stderr.contains("401"), "{done:?}");
    assert!(done.stderr.contains("API key"), "{done:?}");
}

#[tokio::test]
async fn bench_http_publish_counts_requests_and_deliveries() {
    let server = common::start_for_bench().await;
    let done = run(
        lhttp(&[
            "--url",
            &server.url(),
            "bench",
            "http-publish",
            "--count",
            "500",
            "--concurrency",
            "4",
            "--json",
        ]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).expect("JSON report");
    assert_eq!(report["scenario"], "http-publish", "{report}");
    assert_eq!(report["requests"], 500, "{report}");
    assert_eq!(report["ok"], 500, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["deliveries"], 500, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert!(
        report["requests_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    server.wait_subscribers("bench", 0).await;
}
