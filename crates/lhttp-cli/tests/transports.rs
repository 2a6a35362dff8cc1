//! `lhttp --url` with every scheme against a real server listening on every transport:
//! `wss://` and `tls://` (with `--ca`, `--cert`, `--key`), `tcp://`, `unix://`; and
//! `lhttp bench throughput` over `tcp://` and `unix://`.

mod common;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use common::{WAIT, lhttp, run, spawn};
use lhttp_server::{
    Config, Server, ServerHandle,
    config::{TcpTransport, TlsConfig, TlsTransport, UnixTransport},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::{net::TcpListener, task::JoinHandle};

/// Files of a test PKI: a CA, the server's certificate for `localhost` and `127.0.0.1`, and
/// a client certificate, in a directory removed on drop.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Files {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lhttp-cli-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "lhttp test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();
        let files = Files { dir };
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client_cert.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(files.path(name), pem).unwrap();
        }
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server on every transport; TLS clients must present a certificate from the test CA.
struct Everywhere {
    handle: ServerHandle,
    files: Files,
    urls: Vec<String>,
    task: JoinHandle<()>,
}

impl Drop for Everywhere {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn everywhere(bench: bool) -> Everywhere {
    let files = Files::new();
    let socket = files.path("lhttp.sock");
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let urls = vec![
        format!("wss://localhost:{}/", main.local_addr().unwrap().port()),
        format!("tcp://{}", tcp.local_addr().unwrap()),
        format!("tls://127.0.0.1:{}", tls.local_addr().unwrap().port()),
        format!("unix://{}", socket.display()),
    ];
    let mut config = Config::default();
    if bench {
        config.limits.messages_per_second = 0;
        config.limits.max_connections_per_ip = 0;
    }
    let tls_config = TlsConfig {
        cert_file: files.path("server.pem"),
        key_file: files.path("server.key"),
        client_ca_file: Some(files.path("ca.pem")),
        reload_interval_ms: 0,
    };
    config.server.tls = Some(tls_config.clone());
    config.transports.tcp = Some(TcpTransport {
        listen: tcp.local_addr().unwrap(),
    });
    config.transports.tls = Some(TlsTransport {
        listen: tls.local_addr().unwrap(),
        cert_file: tls_config.cert_file,
        key_file: tls_config.key_file,
        client_ca_file: tls_config.client_ca_file,
        reload_interval_ms: 0,
    });
    config.transports.unix = Some(UnixTransport {
        path: socket.clone(),
        mode: "0600".into(),
    });
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
    let deadline = tokio::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no Unix socket");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Everywhere {
        handle,
        files,
        urls,
        task,
    }
}

impl Everywhere {
    /// `--url URL` and the certificate flags, then `args`.
    fn args<'a>(&'a self, url: &'a str, args: &[&'a str]) -> Vec<String> {
        let mut all: Vec<String> = ["--url", url, "--ca"].map(String::from).to_vec();
        all.push(self.files.arg("ca.pem"));
        all.push("--cert".into());
        all.push(self.files.arg("client.pem"));
        all.push("--key".into());
        all.push(self.files.arg("client.key"));
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    fn lhttp(&self, url: &str, args: &[&str]) -> tokio::process::Command {
        let all = self.args(url, args);
        lhttp(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    async fn wait_subscribers(&self, channel: &str, n: usize) {
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

#[tokio::test]
async fn every_subcommand_speaks_every_url_scheme() {
    let server = everywhere(false).await;
    for url in &server.urls {
        let channel = format!("room-{}", &url[..3]);
        let mut sub = spawn(server.lhttp(url, &["sub", &channel]));
        server.wait_subscribers(&channel, 1).await;

        let done = run(server.lhttp(url, &["pub", &channel, "hello"]), b"").await;
        assert_eq!(done.code, Some(0), "{url}: {done:?}");
        // The publisher's request-id is relayed with the message.
        let mut lines = Vec::new();
        for _ in 0..5 {
            lines.push(sub.line().await);
        }
        assert_eq!(lines[0], "LHTTP/1.0 chat", "{url}");
        assert_eq!(lines[1], format!("publish:{channel}"), "{url}");
        assert!(lines[2].starts_with("request-id:"), "{url}: {lines:?}");
        assert_eq!(lines[3..], ["", "hello"], "{url}");
        sub.child.kill().await.unwrap();

        let done = run(server.lhttp(url, &["send", "-c", "inbox"]), b"").await;
        assert_eq!(done.code, Some(0), "{url}: {done:?}");
        assert!(
            done.stdout.starts_with("LHTTP/1.0 inbox\n"),
            "{url}: {done:?}"
        );

        let done = run(server.lhttp(url, &["request", "nobody.home", "x"]), b"").await;
        assert_eq!(done.code, Some(1), "{url}: {done:?}");
        assert!(done.stdout.contains("status:503"), "{url}: {done:?}");

        // The interactive session, scripted from stdin.
        let done = run(
            server.lhttp(url, &[]),
            format!("subscribe {channel}\npublish {channel} scripted\n").as_bytes(),
        )
        .await;
        assert_eq!(done.code, Some(0), "{url}: {done:?}");
        assert!(done.stdout.contains("scripted"), "{url}: {done:?}");
    }
}

#[tokio::test]
async fn tls_urls_need_the_ca_and_the_client_certificate() {
    let server = everywhere(false).await;
    for url in [&server.urls[0], &server.urls[2]] {
        let done = run(lhttp(&["--url", url, "pub", "room", "x"]), b"").await;
        assert_eq!(done.code, Some(3), "{url}: {done:?}");
        assert!(
            done.stderr.contains("TLS handshake failed"),
            "{url}: {done:?}"
        );

        let ca = server.files.arg("ca.pem");
        let done = run(
            lhttp(&["--url", url, "--ca", &ca, "send", "-c", "inbox"]),
            b"",
        )
        .await;
        assert_ne!(done.code, Some(0), "{url}: {done:?}");

        let done = run(
            lhttp(&["--url", url, "--cert", &ca, "pub", "room", "x"]),
            b"",
        )
        .await;
        assert_eq!(done.code, Some(2), "--cert needs --key: {done:?}");
        let done = run(
            lhttp(&[
                "--url",
                url,
                "--ca",
                "/nonexistent/ca.pem",
                "pub",
                "room",
                "x",
            ]),
            b"",
        )
        .await;
        assert!(
            done.stderr.contains("cannot read --ca /nonexistent/ca.pem"),
            "{done:?}"
        );
    }
}

#[tokio::test]
async fn bench_throughput_runs_over_tcp_and_unix_sockets() {
    let server = everywhere(true).await;
    for url in [&server.urls[1], &server.urls[3]] {
        for extra in [&[][..], &["--write-each"][..]] {
            let mut args = vec![
                "bench",
                "throughput",
                "--publishers",
                "2",
                "--subscribers",
                "2",
                "-n",
                "2000",
                "--json",
            ];
            args.extend_from_slice(extra);
            let mut all = vec!["--url", url.as_str()];
            all.extend_from_slice(&args);
            let done = run(lhttp(&all), b"").await;
            assert_eq!(done.code, Some(0), "{url} {extra:?}: {done:?}");
            let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).unwrap();
            assert_eq!(report["published"], 2000, "{report}");
            assert_eq!(report["deliveries"], 4000, "{report}");
            for field in ["lost", "duplicated", "out_of_order", "corrupted"] {
                assert_eq!(report[field], 0, "{field}: {report}");
            }
        }
        let done = run(
            lhttp(&[
                "--url",
                url,
                "bench",
                "latency",
                "--rate",
                "2000",
                "--duration",
                "0.5",
                "--json",
            ]),
            b"",
        )
        .await;
        assert_eq!(done.code, Some(0), "{url}: {done:?}");
    }
}
