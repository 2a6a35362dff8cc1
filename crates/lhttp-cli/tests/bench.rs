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

/// `lhttp bench chat ARGS... --json` against `url`: the run and its report (if it made one).
async fn chat_run(url: &str, args: &[&str]) -> (common::Run, Option<serde_json::Value>) {
    let mut all = vec!["--url", url, "bench", "chat"];
    all.extend_from_slice(args);
    all.push("--json");
    let done = run(lhttp(&all), b"").await;
    let report = serde_json::from_str(done.stdout.trim()).ok();
    (done, report)
}

/// The connections a chat report says came from each source address.
fn connections_per_source(report: &serde_json::Value) -> Vec<(String, u64)> {
    let mut used: Vec<(String, u64)> = report["connections_per_source"]
        .as_object()
        .expect("connections per source")
        .iter()
        .map(|(ip, n)| (ip.clone(), n.as_u64().expect("a count")))
        .collect();
    used.sort();
    used
}

/// A small chat (300 clients in rooms of 30, a message each every 250 ms for 2 s after 0.5 s
/// of warm-up) as `check` expects it: every message reached every member of its room, its
/// sender included, and the latencies and source addresses are reported.
fn assert_small_chat_delivered_everything(done: &common::Run, report: &serde_json::Value) {
    assert_eq!(done.code, Some(0), "{done:?}");
    assert_every_delivery_clean(report);
    assert_eq!(report["scenario"], "chat", "{report}");
    assert_eq!(report["connections"], 300, "{report}");
    assert_eq!(report["rooms"], 10, "{report}");
    assert_eq!(report["room_size"], 30, "{report}");
    assert_eq!(report["disconnected"], 0, "{report}");
    assert_eq!(report["rate_limited"], 0, "{report}");
    // 2 s of a message every 250 ms: 8 from each of the 300 in the measured window, each
    // delivered to the 30 members of its room.
    assert_eq!(report["published"], 2400, "{report}");
    assert_eq!(report["expected_deliveries"], 2400 * 30, "{report}");
    assert_eq!(report["deliveries"], 2400 * 30, "{report}");
    assert_eq!(
        report["offered_deliveries_per_sec"],
        300 * 30 * 4,
        "{report}"
    );
    let per_sec = report["deliveries_per_sec"].as_f64().expect("deliveries/s");
    assert!(
        (300.0 * 30.0 * 4.0 / 3.0..=300.0 * 30.0 * 4.0 * 1.05).contains(&per_sec),
        "the deliveries came at about the offered rate: {report}"
    );
    assert_eq!(
        connections_per_source(report),
        [("127.0.0.1".to_owned(), 150), ("127.0.0.2".to_owned(), 150)],
        "{report}"
    );
    let quantile = |name: &str| report[name].as_f64().expect(name);
    assert!(quantile("p50_us") > 0.0, "{report}");
    assert!(quantile("p50_us") <= quantile("p90_us"), "{report}");
    assert!(quantile("p90_us") <= quantile("p99_us"), "{report}");
    assert!(quantile("p99_us") <= quantile("p999_us"), "{report}");
    assert!(quantile("p999_us") <= quantile("max_us"), "{report}");
    assert!(
        report["server_cpu_ns_per_delivery"].as_f64().expect("CPU") > 0.0,
        "{report}"
    );
}

/// The arguments of the small chat, from `--source-addrs 2`, and the server's `pid`.
fn small_chat(pid: &str) -> [&str; 14] {
    [
        "-n",
        "300",
        "--room-size",
        "30",
        "--interval-ms",
        "250",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--source-addrs",
        "2",
        "--pid",
        pid,
    ]
}

/// Against a server with every default limit on (1000 connections per address, 10,000
/// messages a second per connection): nothing refused, nothing lost.
#[tokio::test]
async fn bench_chat_delivers_every_message_of_every_room_under_the_default_limits() {
    let server = common::start().await;
    // The server runs in this test process: its CPU is this process's threads'.
    let pid = std::process::id().to_string();
    let (done, report) = chat_run(&server.url(), &small_chat(&pid)).await;
    let report = report.unwrap_or_else(|| panic!("no JSON report: {done:?}"));
    assert_small_chat_delivered_everything(&done, &report);
    assert_eq!(report["protocol"], "lhttp", "{report}");
    server.wait_subscribers("chat-0", 0).await;
}

/// The server's per-address limit is why the connections come from several addresses: under
/// it from four, refused from one, with the limit named and what to do about it.
#[tokio::test]
async fn bench_chat_spreads_over_source_addresses_under_the_servers_per_address_limit() {
    let mut config = lhttp_server::Config::default();
    config.limits.max_connections_per_ip = 100;
    let server = common::start_with(config).await;
    // 310 in rooms of 30 (ten full rooms and one of 10) for half a second, from `addrs`
    // source addresses: from four, 78 or 77 connections per address.
    let chat_from = |addrs: &'static str| {
        let url = server.url();
        async move {
            chat_run(
                &url,
                &[
                    "-n",
                    "310",
                    "--room-size",
                    "30",
                    "--interval-ms",
                    "250",
                    "--duration",
                    "0.5",
                    "--source-addrs",
                    addrs,
                ],
            )
            .await
        }
    };
    let (done, report) = chat_from("4").await;
    let report = report.unwrap_or_else(|| panic!("no JSON report: {done:?}"));
    assert_eq!(done.code, Some(0), "{done:?}");
    assert_every_delivery_clean(&report);
    assert_eq!(report["rooms"], 11, "{report}");
    assert_eq!(report["last_room_size"], 10, "{report}");
    // Two messages from each connection, to 30 members in ten rooms and to 10 in the last.
    assert_eq!(report["published"], 620, "{report}");
    assert_eq!(report["expected_deliveries"], 300 * 2 * 30 + 10 * 2 * 10);
    assert_eq!(
        report["deliveries"], report["expected_deliveries"],
        "{report}"
    );
    let used = connections_per_source(&report);
    assert_eq!(used.len(), 4, "{report}");
    assert!(used.iter().all(|(_, n)| *n <= 100), "{report}");

    let (done, _) = chat_from("1").await;
    assert_ne!(done.code, Some(0), "{done:?}");
    assert!(
        done.stderr.contains("HTTP 429") && done.stderr.contains("per-address limit"),
        "the refusal names the server's limit: {done:?}"
    );
    assert!(
        done.stderr.contains("--source-addrs"),
        "the refusal says what to do: {done:?}"
    );
}

#[tokio::test]
async fn bench_chat_drives_nats_server_over_websocket_with_the_same_checks() {
    let nats = NatsWebSocket::start();
    let url = format!("ws://127.0.0.1:{}/", nats.port);
    let pid = nats.child.id().to_string();
    let mut args = small_chat(&pid).to_vec();
    args.push("--nats");
    let (done, report) = chat_run(&url, &args).await;
    let report = report.unwrap_or_else(|| panic!("no JSON report: {done:?}"));
    assert_small_chat_delivered_everything(&done, &report);
    assert_eq!(report["protocol"], "nats", "{report}");
}
