//! A real `nats-server` child process for the cluster tests (Debian package `nats-server`), on
//! a free loopback port, killed when its guard is dropped; with JetStream (`-js`) when asked,
//! its store in a directory of its own.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::WAIT;

/// How long nats-server may take to accept connections, and a node to (re)connect to it.
pub const NATS_UP: Duration = Duration::from_secs(15);

/// A `nats-server` child process on a loopback port, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub monitor_port: u16,
    /// JetStream's store directory, removed on drop; `None` without JetStream.
    store: Option<PathBuf>,
}

fn nats_binary() -> PathBuf {
    let candidates = ["/usr/bin/nats-server", "/usr/sbin/nats-server"];
    if let Some(found) = candidates.iter().map(Path::new).find(|p| p.exists()) {
        return found.to_path_buf();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "nats-server is not installed: the cluster tests need a real NATS server. \
             Install the Debian package (apt-get install nats-server) or run scripts/test, \
             which installs it."
        )
    })
}

/// A free loopback port below the kernel's ephemeral range (which starts at 32768), so that no
/// other test's `bind(0)` can take it while nats-server is stopped and restarted on it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let port = 20_000 + (hasher.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

impl NatsServer {
    /// Starts nats-server on a free port (another one if a parallel test took it meanwhile).
    pub fn start() -> NatsServer {
        NatsServer::start_with(None)
    }

    /// Starts nats-server with JetStream enabled (`-js`), storing in a new directory.
    pub fn start_jetstream() -> NatsServer {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lhttp-js-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        NatsServer::start_with(Some(dir))
    }

    fn start_with(store: Option<PathBuf>) -> NatsServer {
        for _attempt in 0..3 {
            if let Some(server) = NatsServer::try_start_on(free_port(), free_port(), store.clone())
            {
                return server;
            }
        }
        panic!("nats-server could not start on a free port in 3 attempts");
    }

    /// Starts nats-server on `port` (client connections) and `monitor_port` (HTTP monitoring).
    pub fn start_on(port: u16, monitor_port: u16) -> NatsServer {
        NatsServer::try_start_on(port, monitor_port, None)
            .unwrap_or_else(|| panic!("nats-server exited at start; is port {port} taken?"))
    }

    /// Starts nats-server and waits until it accepts TCP connections; `None` when it exits
    /// first (a port is taken).
    fn try_start_on(port: u16, monitor_port: u16, store: Option<PathBuf>) -> Option<NatsServer> {
        let mut command = Command::new(nats_binary());
        if let Some(dir) = &store {
            command.arg("-js").arg("-sd").arg(dir);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let mut server = NatsServer {
            child: Some(child),
            port,
            monitor_port,
            store,
        };
        let deadline = Instant::now() + NATS_UP;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            // Exit first: a port taken by another process would also accept connections.
            if let Some(child) = server.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return None;
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "nats-server does not accept connections on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the process and waits for it to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Subjects of every channel subscription NATS holds, from its monitoring endpoint (the
    /// clients' own `_INBOX` subscriptions, used for requests, are left out).
    pub async fn subjects(&self) -> Vec<String> {
        let url = format!(
            "http://127.0.0.1:{}/connz?subs=1&limit=1024",
            self.monitor_port
        );
        let text = reqwest::get(&url)
            .await
            .expect("NATS monitoring answers")
            .text()
            .await
            .expect("NATS monitoring body");
        let value: serde_json::Value = serde_json::from_str(&text).expect("connz is JSON");
        let mut subjects = Vec::new();
        for connection in value["connections"].as_array().into_iter().flatten() {
            for subject in connection["subscriptions_list"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(s) = subject.as_str().filter(|s| !s.starts_with("_INBOX.")) {
                    subjects.push(s.to_owned());
                }
            }
        }
        subjects
    }

    /// Waits until NATS holds exactly `n` subscriptions to `subject`.
    pub async fn wait_subject_count(&self, subject: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let subjects = self.subjects().await;
            let count = subjects.iter().filter(|s| *s == subject).count();
            if count == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NATS holds {count} subscriptions to {subject}, expected {n}: {subjects:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.store {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
