//! The embedding examples run as a user runs them: built with cargo, started with
//! `--listen 127.0.0.1:0`, used over a real WebSocket, and stopped with SIGTERM (the clients get
//! the graceful close, the process exits 0).

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Client, WAIT, body};

/// Builds example `name` (a no-op when it is up to date) and returns its executable.
fn build(name: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            "lhttp-server",
            "--example",
            name,
        ])
        .args(["--message-format", "json"])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["target"]["name"] == name && v["executable"].is_string())
        .and_then(|v| v["executable"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no executable for example {name}"))
}

/// Starts example `name` on a free port; returns it and its WebSocket URL (from its first line).
fn start(name: &str) -> (Child, String) {
    let mut child = Command::new(build(name))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the example starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_once(": "))
        .map(|(url, _)| url.to_owned())
        .unwrap_or_else(|| panic!("first line: {line:?}"));
    (child, url)
}

/// SIGTERM, then waits (bounded) for a clean exit.
fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT * 2;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the example did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_filter_example_refuses_anonymous_publishes_and_stamps_the_others() {
    let (child, url) = start("filter");
    let mut client = Client::connect(&url).await;
    client.subscribe("room").await;
    client
        .send("LHTTP/1.0 chat\r\npublish:room\r\nrequest-id:1\r\n\r\nwho am I")
        .await;
    let (status, reason, _) = client.recv_error().await;
    assert_eq!(status, 400, "{reason}");
    client
        .send("LHTTP/1.0 chat\r\npublish:room\r\nnick:ann\r\nreceived-at:0\r\n\r\nhi")
        .await;
    let copy = client.recv().await;
    assert_eq!(body(&copy), "hi");
    let stamped: u128 = copy.header("received-at").unwrap().parse().unwrap();
    assert!(
        stamped > 1_600_000_000_000,
        "a server time, not the client's: {stamped}"
    );
    terminate(child);
    let (code, _) = client.recv_close().await;
    assert_eq!(code, 1012);
}

#[tokio::test]
async fn the_clock_example_answers_time_and_stops_on_sigterm() {
    let (child, url) = start("clock");
    let mut client = Client::connect(&url).await;
    client.send("LHTTP/1.0 time\r\n\r\n").await;
    let answer = client.recv().await;
    assert_eq!(answer.header("unit"), Some("s"));
    assert!(body(&answer).parse::<u64>().unwrap() > 1_600_000_000);
    terminate(child);
}
