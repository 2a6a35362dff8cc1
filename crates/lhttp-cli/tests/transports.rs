//! `lhttp --url` with every scheme against a real server listening on every transport:
//! `wss://` and `tls://` (with `--ca`, `--cert`, `--key`), `tcp://`, `unix://`; and
//! `lhttp bench` over each of them, TLS with a PKI made at test time.

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
        // Exactly what was published: the request-id that asked for the publisher's `ok`
        // stays between the publisher and the server.
        let mut lines = Vec::new();
        for _ in 0..4 {
            lines.push(sub.line().await);
        }
        assert_eq!(
            lines,
            ["LHTTP/1.0 chat", &format!("publish:{channel}"), "", "hello"],
            "{url}"
        );
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

/// Runs `command` (a bench with `--json`), expects success, returns the report.
async fn bench_report(command: tokio::process::Command, what: &str) -> serde_json::Value {
    let done = run(command, b"").await;
    assert_eq!(done.code, Some(0), "{what}: {done:?}");
    serde_json::from_str(done.stdout.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {done:?}"))
}

fn assert_every_delivery_clean(report: &serde_json::Value, what: &str) {
    for field in ["lost", "duplicated", "out_of_order", "corrupted"] {
        assert_eq!(report[field], 0, "{what}: {field}: {report}");
    }
}

/// Every bench scenario over `wss://` and `tls://`, trusting the test CA and presenting a
/// client certificate it signed (the server requires one): every message arrives, once, in
/// order and intact, also with one frame per write, with publishers and subscribers on
/// different TLS transports, and with `POST /publish` over HTTPS.
#[tokio::test]
async fn bench_runs_over_wss_and_tls_with_certificates_made_at_test_time() {
    let server = everywhere(true).await;
    let (wss, tls) = (server.urls[0].as_str(), server.urls[2].as_str());
    for url in [wss, tls] {
        for extra in [&[][..], &["--write-each"][..]] {
            let mut args = vec!["bench", "throughput", "-p", "2", "-s", "2", "-n", "2000"];
            args.extend_from_slice(extra);
            args.push("--json");
            let what = format!("{url} throughput {extra:?}");
            let report = bench_report(server.lhttp(url, &args), &what).await;
            assert_eq!(report["published"], 2000, "{what}: {report}");
            assert_eq!(report["deliveries"], 4000, "{what}: {report}");
            assert_every_delivery_clean(&report, &what);
        }

        let args = [
            "bench",
            "latency",
            "--rate",
            "2000",
            "--duration",
            "0.5",
            "--json",
        ];
        let what = format!("{url} latency");
        let report = bench_report(server.lhttp(url, &args), &what).await;
        assert_eq!(report["published"], 1000, "{what}: {report}");
        assert_eq!(report["deliveries"], 1000, "{what}: {report}");
        assert_every_delivery_clean(&report, &what);

        let args = ["bench", "requests", "-n", "500", "-k", "16", "--json"];
        let what = format!("{url} requests");
        let report = bench_report(server.lhttp(url, &args), &what).await;
        assert_eq!(report["answered"], 500, "{what}: {report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{what}: {report}");
        for field in ["duplicated", "corrupted", "unanswered"] {
            assert_eq!(report[field], 0, "{what}: {field}: {report}");
        }

        let args = [
            "bench",
            "connections",
            "-n",
            "20",
            "--channels",
            "2",
            "--source-addrs",
            "2",
            "--json",
        ];
        let what = format!("{url} connections");
        let report = bench_report(server.lhttp(url, &args), &what).await;
        assert_eq!(report["connections"], 20, "{what}: {report}");
        assert_eq!(
            report["connections_per_source"],
            serde_json::json!({"127.0.0.1": 10, "127.0.0.2": 10}),
            "{what}: {report}"
        );
        server.wait_subscribers("idle-0", 0).await;
    }

    // Publishers on one TLS transport, subscribers on the other.
    let args = [
        "bench",
        "throughput",
        "--sub-url",
        tls,
        "-s",
        "3",
        "-n",
        "2000",
        "--write-each",
        "--json",
    ];
    let report = bench_report(server.lhttp(wss, &args), "wss -> tls").await;
    assert_eq!(report["deliveries"], 6000, "{report}");
    assert_every_delivery_clean(&report, "wss -> tls");

    // POST /publish over HTTPS on the main port; the subscriber on tls://.
    let args = [
        "bench",
        "http-publish",
        "--sub-url",
        tls,
        "-k",
        "4",
        "-n",
        "500",
        "--json",
    ];
    let report = bench_report(server.lhttp(wss, &args), "https -> tls").await;
    let publish_url = format!(
        "https://{}/publish",
        &wss["wss://".len()..].trim_end_matches('/')
    );
    assert_eq!(report["publish_url"], publish_url.as_str(), "{report}");
    assert_eq!(report["ok"], 500, "{report}");
    assert_eq!(report["deliveries"], 500, "{report}");
    assert_eq!(
        (&report["lost"], &report["duplicated"]),
        (&0.into(), &0.into()),
        "{report}"
    );
}

/// `bench connections` opens its connections over a Unix socket too; spreading them over
/// source addresses is refused there with the reason, before anything is opened.
#[tokio::test]
async fn bench_connections_over_a_unix_socket_take_no_source_addresses() {
    let server = everywhere(true).await;
    let unix = server.urls[3].as_str();
    let args = [
        "bench",
        "connections",
        "-n",
        "20",
        "--channels",
        "2",
        "--json",
    ];
    let report = bench_report(lhttp(&[&["--url", unix][..], &args].concat()), "unix").await;
    assert_eq!(report["connections"], 20, "{report}");
    assert_eq!(report["source_addrs"], 0, "{report}");
    server.wait_subscribers("idle-0", 0).await;

    let done = run(
        lhttp(&[
            "--url",
            unix,
            "bench",
            "connections",
            "-n",
            "20",
            "--source-addrs",
            "2",
        ]),
        b"",
    )
    .await;
    assert_eq!(done.code, Some(1), "{done:?}");
    assert!(
        done.stderr
            .contains("--source-addrs applies to TCP-based URLs (ws://, wss://, tcp://, tls://)"),
        "{done:?}"
    );
    assert_eq!(server.handle.connection_count(), 0, "nothing was opened");
}
