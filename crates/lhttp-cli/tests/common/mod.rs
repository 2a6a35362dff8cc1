//! Test support: a real lhttp server in this process, and the `lhttp` binary as a child.
#![allow(dead_code)]

use std::{net::SocketAddr, process::Stdio, time::Duration};

use lhttp_server::{Config, Server, ServerHandle};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    net::TcpListener,
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

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

pub async fn start() -> TestServer {
    start_with(Config::default()).await
}

/// A server for load runs: the abuse limits off (a benchmark publishes faster than a client is
/// allowed to by default, and opens many connections from one address), as docs/performance.md
/// runs them.
pub async fn start_for_bench() -> TestServer {
    let mut config = Config::default();
    config.limits.messages_per_second = 0;
    config.limits.max_connections_per_ip = 0;
    start_with(config).await
}

/// A server with `config` on a free port.
pub async fn start_with(config: Config) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = Server::builder(config).build().expect("server builds");
    let handle = server.handle();
    let task = tokio::spawn(async move {
        server
            .run(listener, std::future::pending())
            .await
            .expect("server runs");
    });
    TestServer { addr, handle, task }
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Waits until `channel` has `n` subscribers on this server.
    pub async fn wait_subscribers(&self, channel: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.handle.hub().subscriber_count(channel) != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel}: expected {n} subscribers"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The `lhttp` binary with `args`, without inheriting `LHTTP_URL`.
pub fn lhttp(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lhttp"));
    command
        .args(args)
        .env_remove("LHTTP_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// What a finished `lhttp` run left behind.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to the end with `input` on stdin (bounded by [`WAIT`]).
pub async fn run(mut command: Command, input: &[u8]) -> Run {
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("lhttp starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.expect("write stdin");
    drop(stdin);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("lhttp did not finish in time")
        .expect("lhttp runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `lhttp` whose stdout is read line by line.
pub struct Running {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

pub fn spawn(mut command: Command) -> Running {
    let mut child = command.spawn().expect("lhttp starts");
    let stdout = child.stdout.take().expect("stdout");
    Running {
        child,
        lines: BufReader::new(stdout).lines(),
    }
}

impl Running {
    /// The next line of stdout (bounded by [`WAIT`]).
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("timed out waiting for output")
            .expect("read stdout")
            .expect("lhttp ended early")
    }
}

/// A port on which nobody listens.
pub fn free_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("ws://{addr}/")
}
