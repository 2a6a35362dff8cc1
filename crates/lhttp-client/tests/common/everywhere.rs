//! A real server on every transport at once: WebSocket with TLS on the main port (`wss://`),
//! `[transports.tcp]`, `[transports.tls]` and `[transports.unix]`, on fresh ports and paths,
//! with certificates from a [`Pki`] made at test time.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use lhttp_client::{Client, ClientBuilder};
use lhttp_server::{
    Config, Server, ServerHandle,
    config::{TcpTransport, TlsConfig, TlsTransport, UnixTransport},
};
use tokio::{net::TcpListener, task::JoinHandle};

use super::{WAIT, pki::Pki};

/// A directory of its own under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "lhttp-client-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server listening on every transport: WebSocket with TLS on the main port, plain TCP,
/// TLS over TCP and a Unix socket, all on fresh ports and paths.
pub struct Everywhere {
    pub handle: ServerHandle,
    pub pki: Pki,
    pub wss: String,
    pub tcp: String,
    pub tls: String,
    pub unix: String,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Everywhere {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server of [`Everywhere`]; `mutual` asks TLS clients for a certificate from the test CA.
pub async fn everywhere(mutual: bool, tweak: impl FnOnce(&mut Config)) -> Everywhere {
    let pki = Pki::new();
    let dir = TempDir::new();
    let cert_file = dir.write("cert.pem", &pki.server_cert_pem);
    let key_file = dir.write("key.pem", &pki.server_key_pem);
    let client_ca_file = mutual.then(|| dir.write("ca.pem", &pki.ca_pem));
    let socket = dir.0.join("lhttp.sock");
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let urls = (
        format!("wss://localhost:{}/", main.local_addr().unwrap().port()),
        format!("tcp://{}", tcp.local_addr().unwrap()),
        format!("tls://localhost:{}", tls.local_addr().unwrap().port()),
        format!("unix://{}", socket.display()),
    );
    let mut config = Config::default();
    config.server.shutdown_timeout_ms = 1_000;
    config.server.tls = Some(TlsConfig {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        client_ca_file: client_ca_file.clone(),
        reload_interval_ms: 0,
    });
    config.transports.tcp = Some(TcpTransport {
        listen: tcp.local_addr().unwrap(),
    });
    config.transports.tls = Some(TlsTransport {
        listen: tls.local_addr().unwrap(),
        cert_file,
        key_file,
        client_ca_file,
        reload_interval_ms: 0,
    });
    config.transports.unix = Some(UnixTransport {
        path: socket.clone(),
        mode: "0600".into(),
    });
    tweak(&mut config);
    let server = Server::builder(config)
        .build()
        .expect("server builds")
        .tcp_listener(tcp)
        .tls_listener(tls);
    let handle = server.handle();
    let task = tokio::spawn(async move {
        server
            .run(main, std::future::pending())
            .await
            .expect("server runs");
    });
    // The Unix socket is bound by the server's task.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no Unix socket");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Everywhere {
        handle,
        pki,
        wss: urls.0,
        tcp: urls.1,
        tls: urls.2,
        unix: urls.3,
        task,
        _dir: dir,
    }
}

impl Everywhere {
    /// A builder for `url` that trusts the test CA (and, for `mutual`, has its certificate).
    pub fn builder(&self, url: &str) -> ClientBuilder {
        Client::builder(url)
            .ca_certificate(self.pki.ca_pem.clone())
            .client_certificate(
                self.pki.client_cert_pem.clone(),
                self.pki.client_key_pem.clone(),
            )
    }

    pub fn in_process(&self) -> ClientBuilder {
        let handle = self.handle.clone();
        Client::builder_with_connector(move || {
            let stream = handle.connect_in_process();
            async move { Ok(stream) }
        })
    }

    pub fn urls(&self) -> [&str; 4] {
        [&self.wss, &self.tcp, &self.tls, &self.unix]
    }
}
