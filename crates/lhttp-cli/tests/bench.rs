//! `lhttp bench` scenarios with several publishers, subscribers and channels, duration mode,
//! plots and source addresses, run as the real binary against a real in-process server.

mod common;

use common::{TestServer, lhttp, run, start_for_bench};

/// Runs `lhttp --url URL bench ARGS... --json`, expects success, returns the report.
async fn bench_json(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let url = server.url();
    let mut all = vec!["--url", &url, "bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let done = run(lhttp(&all), b"").await;
    assert_eq!(done.code, Some(0), "{done:?}");
    // stdout holds the report alone: no progress bar, no table.
    serde_json::from_str(done.stdout.trim()).expect("one JSON report on stdout")
}

fn assert_every_delivery_clean(report: &serde_json::Value) {
    for field in ["lost", "duplicated", "out_of_order", "corrupted"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
}

#[tokio::test]
async fn bench_throughput_with_publishers_subscribers_and_channels() {
    let server = start_for_bench().await;
    let report = bench_json(
        &server,
        &[
            "throughput",
            "--publishers",
            "3",
            "--subscribers",
            "6",
            "--channels",
            "3",
            "-n",
            "3000",
            "--window",
            "300",
        ],
    )
    .await;
    assert_eq!(report["publishers"], 3, "{report}");
    assert_eq!(report["subscribers"], 6, "{report}");
    assert_eq!(report["channels"], 3, "{report}");
    assert_eq!(report["published"], 3000, "{report}");
    // 1000 messages per channel, each channel with 2 subscribers.
    assert_eq!(report["deliveries"], 6000, "{report}");
    assert_every_delivery_clean(&report);
    for channel in ["bench-0", "bench-1", "bench-2"] {
        server.wait_subscribers(channel, 0).await;
    }
}

#[tokio::test]
async fn bench_throughput_for_a_duration_delivers_everything_published() {
    let server = start_for_bench().await;
    let report = bench_json(
        &server,
        &[
            "throughput",
            "--duration",
            "1",
            "-p",
            "2",
            "-s",
            "2",
            "--window",
            "200",
        ],
    )
    .await;
    let published = report["published"].as_u64().expect("published");
    assert!(published > 0, "{report}");
    assert_eq!(
        report["deliveries"].as_u64(),
        Some(published * 2),
        "{report}"
    );
    assert_every_delivery_clean(&report);
    let elapsed = report["elapsed_ms"].as_u64().expect("elapsed_ms");
    assert!(
        elapsed >= 900,
        "the run lasted about the duration: {report}"
    );
}

#[tokio::test]
async fn bench_throughput_rejects_channels_without_subscribers() {
    let server = start_for_bench().await;
    let done = run(
        lhttp(&[
            "--url",
            &server.url(),
            "bench",
            "throughput",
            "-s",
            "1",
            "--channels",
            "2",
        ]),
        b"",
    )
    .await;
    assert_ne!(done.code, Some(0), "{done:?}");
    assert!(
        done.stderr.contains("every channel needs a subscriber"),
        "{done:?}"
    );
}

/// A minimal check that `path` is an SVG drawing with at least one line in it.
fn assert_svg_with_a_line(path: &std::path::Path) {
    let svg = std::fs::read_to_string(path).expect("the plot was written");
    let start = svg.trim_start();
    assert!(
        start.starts_with("<svg") || start.starts_with("<?xml"),
        "not an SVG file: {}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.contains("<svg"), "no <svg> element");
    assert!(svg.trim_end().ends_with("</svg>"), "the SVG is not closed");
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "the SVG draws no line"
    );
}

#[tokio::test]
async fn bench_plots_are_svg_files_with_a_curve() {
    let server = start_for_bench().await;
    let dir = std::env::temp_dir().join(format!("lhttp-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let throughput_svg = dir.join("throughput.svg");
    let report = bench_json(
        &server,
        &[
            "throughput",
            "--duration",
            "0.5",
            "--plot",
            throughput_svg.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    assert_every_delivery_clean(&report);
    assert_svg_with_a_line(&throughput_svg);

    let latency_svg = dir.join("latency.svg");
    let report = bench_json(
        &server,
        &[
            "latency",
            "--rate",
            "500",
            "--duration",
            "0.5",
            "--plot",
            latency_svg.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    assert_every_delivery_clean(&report);
    assert_svg_with_a_line(&latency_svg);
    let svg = std::fs::read_to_string(&latency_svg).expect("latency plot");
    assert!(svg.contains("99%"), "the percentile axis is labelled");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bench_connections_spread_over_source_addresses() {
    let server = start_for_bench().await;
    let report = bench_json(
        &server,
        &[
            "connections",
            "-n",
            "30",
            "--channels",
            "3",
            "--source-addrs",
            "3",
        ],
    )
    .await;
    assert_eq!(report["connections"], 30, "{report}");
    assert_eq!(report["source_addrs"], 3, "{report}");
    let per_source = report["connections_per_source"]
        .as_object()
        .expect("connections per source");
    let mut used: Vec<(&str, u64)> = per_source
        .iter()
        .map(|(ip, n)| (ip.as_str(), n.as_u64().expect("count")))
        .collect();
    used.sort();
    assert_eq!(
        used,
        [("127.0.0.1", 10), ("127.0.0.2", 10), ("127.0.0.3", 10)],
        "{report}"
    );
    assert!(report["open_files_limit"].as_u64().unwrap() > 0, "{report}");
    server.wait_subscribers("idle-0", 0).await;
}

/// A server that lets a connection publish 100 messages a second (burst 100), and closes it
/// after `close_after` refusals.
async fn rate_limited_server(close_after: u64) -> TestServer {
    let mut config = lhttp_server::Config::default();
    config.limits.max_connections_per_ip = 0;
    config.limits.messages_per_second = 100;
    config.limits.message_burst = 100;
    config.limits.rate_limit_close_after = close_after;
    common::start_with(config).await
}

/// Runs `lhttp bench throughput ARGS...` against `server`, giving up after 1 s of silence.
async fn throughput_with_one_second_timeout(server: &TestServer, args: &[&str]) -> common::Run {
    let url = server.url();
    let mut all = vec!["--url", &url, "--timeout", "1", "bench", "throughput"];
    all.extend_from_slice(args);
    run(lhttp(&all), b"").await
}

/// Against a server that keeps its per-connection rate limit, the refused messages are
/// reported as such (with what to do about it), not only as lost.
#[tokio::test]
async fn bench_reports_messages_the_rate_limit_refused() {
    let server = rate_limited_server(1_000_000).await;
    let done = throughput_with_one_second_timeout(&server, &["-n", "400", "--window", "400"]).await;
    assert_ne!(done.code, Some(0), "messages were lost: {done:?}");
    assert!(
        done.stdout.contains("LHTTPD_LIMITS__MESSAGES_PER_SECOND=0"),
        "{done:?}"
    );
    let json = ["-n", "400", "--window", "400", "--json"];
    let done = throughput_with_one_second_timeout(&server, &json).await;
    let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).expect("a report");
    let refused = report["rate_limited"].as_u64().expect("a count");
    // The burst lets about 100 through; every message lost was refused, and so may be the
    // publisher's end marker.
    let lost = report["lost"].as_u64().expect("a count");
    assert!(lost > 200, "{report}");
    assert!((lost..=lost + 1).contains(&refused), "{report}");
}

/// A server closes a connection that keeps publishing over its rate limit; the bench says why
/// its publisher failed.
#[tokio::test]
async fn bench_explains_a_publisher_closed_for_its_rate() {
    let server = rate_limited_server(50).await;
    let done = throughput_with_one_second_timeout(&server, &["-n", "5000"]).await;
    assert_ne!(done.code, Some(0), "{done:?}");
    assert!(
        done.stderr
            .contains("closed the publisher's connection after refusing"),
        "{done:?}"
    );
}

/// A real nats-server (Debian package `nats-server`) with its WebSocket port, for the
/// side-by-side figures; killed when dropped.
struct NatsWebSocket {
    child: std::process::Child,
    port: u16,
    config: std::path::PathBuf,
}

impl NatsWebSocket {
    fn start() -> NatsWebSocket {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (client_port, port) = (free(), free());
        let config = std::env::temp_dir().join(format!("lhttp-bench-nats-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{client_port}\nwebsocket {{ listen: \"127.0.0.1:{port}\", no_tls: true }}\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server's WebSocket port never opened"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        NatsWebSocket {
            child,
            port,
            config,
        }
    }
}

impl Drop for NatsWebSocket {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

#[tokio::test]
async fn bench_throughput_drives_nats_server_over_websocket_with_the_same_checks() {
    let nats = NatsWebSocket::start();
    let url = format!("ws://127.0.0.1:{}/", nats.port);
    let pid = nats.child.id().to_string();
    let args = [
        "--url",
        &url,
        "bench",
        "throughput",
        "--nats",
        "-n",
        "2000",
        "-s",
        "3",
        "--size",
        "100",
        "--write-each",
        "--pid",
        &pid,
        "--json",
    ];
    let done = run(lhttp(&args), b"").await;
    assert_eq!(done.code, Some(0), "{done:?}");
    let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).expect("JSON report");
    // Every one of the 3 subscribers got every message once, in order, byte for byte.
    assert_eq!(report["deliveries"], 6000, "{report}");
    assert_every_delivery_clean(&report);
    assert!(
        report["server_cpu_ns_per_delivery"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[tokio::test]
async fn bench_throughput_sends_sporadic_messages_and_the_servers_cpu_per_delivery() {
    let server = start_for_bench().await;
    // The server runs in this test process: its CPU is this process's threads'.
    let pid = std::process::id().to_string();
    let report = bench_json(
        &server,
        &["throughput", "-n", "50", "--pause-us", "100", "--pid", &pid],
    )
    .await;
    assert_eq!(report["deliveries"], 50, "{report}");
    assert_every_delivery_clean(&report);
    // A timer's pause after each of 50 messages: well under a thousand a second.
    assert!(
        report["published_per_sec"].as_f64().unwrap() < 2000.0,
        "{report}"
    );
    assert!(
        report["server_cpu_ns_per_delivery"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
