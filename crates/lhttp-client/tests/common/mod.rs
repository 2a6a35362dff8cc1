//! Test support: a real lhttp server in this process, on a loopback port.
#![allow(dead_code)]

pub mod everywhere;
pub mod pki;
pub mod relay;

use std::{net::SocketAddr, time::Duration};

use lhttp_server::{Config, Server, ServerHandle, config::ChannelOptions};
use tokio::{net::TcpListener, task::JoinHandle};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

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

/// A server on a free port.
pub async fn start() -> TestServer {
    start_with(test_config()).await
}

/// A server with `config` on a free port.
pub async fn start_with(config: Config) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve(listener, config)
}

/// A server on `addr` (a port a previous server used); retries while the port is busy.
pub async fn start_on(addr: SocketAddr) -> TestServer {
    start_on_with(addr, test_config()).await
}

/// [`start_on`] with `config`.
pub async fn start_on_with(addr: SocketAddr, config: Config) -> TestServer {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return serve(listener, config),
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cannot bind {addr} again: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The default configuration, with a short shutdown.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.shutdown_timeout_ms = 1_000;
    config
}

/// [`test_config`] where channels `feed.*` keep their last 1000 messages and `short.*` their
/// last 5, in memory (lost when the server stops).
pub fn history_config() -> Config {
    let mut config = test_config();
    keep_history(&mut config);
    config
}

/// Adds the history of [`history_config`] to `config`.
pub fn keep_history(config: &mut Config) {
    for (pattern, size) in [("feed.*", 1000), ("short.*", 5)] {
        config.channels.push(ChannelOptions {
            pattern: pattern.to_owned(),
            history_size: size,
            ..ChannelOptions::default()
        });
    }
    config.history.store = "memory".to_owned();
}

fn serve(listener: TcpListener, config: Config) -> TestServer {
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

    /// Shuts the server down and waits until it stopped (its port is free again).
    pub async fn stop(mut self) {
        self.handle.shutdown();
        tokio::time::timeout(WAIT * 2, &mut self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task");
    }

    /// Waits until `channel` has `n` subscribers on this server.
    pub async fn wait_subscribers(&self, channel: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.handle.hub().subscriber_count(channel) != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel}: expected {n} subscribers, server has {}",
                self.handle.hub().subscriber_count(channel)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
