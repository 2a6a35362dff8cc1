//! End-to-end tests of the `lhttpd` binary, run as a child process on a free loopback port:
//! configuration (embedded default, files, environment, flags), graceful shutdown on SIGTERM,
//! chatting over WebSocket exactly as the original JavaScript SDK does, and logging.
//!
//! Every child is killed when its guard is dropped (also when a test panics), and every wait is
//! bounded by a deadline.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{self, protocol::frame::coding::CloseCode},
};

const LHTTPD: &str = env!("CARGO_BIN_EXE_lhttpd");

/// Time for a debug build to start and answer `/healthz` on a busy two-core machine.
const STARTUP: Duration = Duration::from_secs(20);
/// Time for one step a user would wait on: an answer, a delivered message, a command to end.
const STEP: Duration = Duration::from_secs(10);
/// Interval of bounded polling (process exit, `/healthz`, log lines).
const POLL: Duration = Duration::from_millis(20);

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

// ---------------------------------------------------------------------------------------------
// Child processes

/// Bytes a child wrote to one of its pipes, collected by a thread until the pipe closes.
#[derive(Clone, Default)]
struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
    closed: Arc<AtomicBool>,
}

impl Captured {
    fn collect(mut pipe: impl Read + Send + 'static) -> Captured {
        let captured = Captured::default();
        let sink = captured.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.bytes.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
            sink.closed.store(true, Ordering::SeqCst);
        });
        captured
    }

    /// What was written so far, without terminal colour codes.
    fn text(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&self.bytes.lock().unwrap()))
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which the log formatter may emit.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A command for `lhttpd` that does not inherit the test's own `LHTTPD_*` or `RUST_LOG`
/// settings, and shows a backtrace if it ever panics (so that a panic is easy to recognise).
fn lhttpd() -> Command {
    let mut command = Command::new(LHTTPD);
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("LHTTPD_") || name_text == "RUST_LOG" {
            command.env_remove(&name);
        }
    }
    command.env("RUST_BACKTRACE", "1");
    command.stdin(Stdio::null());
    command
}

/// Waits for `child` to exit, polling until `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// The result of a command that ran to completion.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a command that is expected to exit by itself within [`STEP`]; kills it otherwise.
fn run(mut command: Command) -> Finished {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lhttpd");
    let stdout = Captured::collect(child.stdout.take().unwrap());
    let stderr = Captured::collect(child.stderr.take().unwrap());
    let Some(status) = wait_until(&mut child, Instant::now() + STEP) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "lhttpd did not exit within {STEP:?}; stderr:\n{}",
            stderr.text()
        );
    };
    let deadline = Instant::now() + STEP;
    while !(stdout.is_closed() && stderr.is_closed()) && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    Finished {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

/// A running `lhttpd` server; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Captured,
}

/// How the server is told its address.
#[derive(Clone, Copy)]
enum Listen {
    Flag,
    Env,
}

impl Server {
    /// Starts `lhttpd` with `args` and `env` on a free loopback port, given by `--listen`.
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with(args, env, Listen::Flag).await
    }

    /// Starts `lhttpd` and waits until `GET /healthz` answers 200. A port taken by someone else
    /// between the probe and the server's bind is retried with another one.
    async fn start_with(args: &[&str], env: &[(&str, &str)], listen: Listen) -> Server {
        let http = http_client();
        for _attempt in 0..3 {
            let addr = free_addr();
            let mut command = lhttpd();
            command.args(args).envs(env.iter().copied());
            match listen {
                Listen::Flag => command.arg("--listen").arg(addr.to_string()),
                Listen::Env => command.env("LHTTPD_LISTEN", addr.to_string()),
            };
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn lhttpd");
            let stderr = Captured::collect(child.stderr.take().unwrap());
            let mut server = Server {
                child,
                addr,
                stderr,
            };
            let deadline = Instant::now() + STARTUP;
            loop {
                if let Some(status) = server.child.try_wait().expect("try_wait") {
                    let log = server.stderr_when_closed();
                    if log.contains("cannot listen") {
                        break; // The port was taken meanwhile: try another.
                    }
                    panic!("lhttpd exited at startup with {status}; stderr:\n{log}");
                }
                let health = http.get(server.url("/healthz")).send().await;
                if health.is_ok_and(|r| r.status() == 200) {
                    return server;
                }
                assert!(
                    Instant::now() < deadline,
                    "lhttpd did not answer /healthz within {STARTUP:?}; stderr:\n{}",
                    server.stderr.text()
                );
                tokio::time::sleep(POLL).await;
            }
        }
        panic!("no free port found for lhttpd in 3 attempts");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends SIGTERM, as `kill` and service managers do.
    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit by itself within `limit`.
    async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "lhttpd did not exit within {limit:?}; stderr:\n{}",
                self.stderr.text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The whole stderr of a process that has exited (waits, bounded, for the pipe to close).
    fn stderr_when_closed(&self) -> String {
        let deadline = Instant::now() + STEP;
        while !self.stderr.is_closed() && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        self.stderr.text()
    }

    /// Waits until the log contains a line for which `pred` holds.
    async fn wait_for_log_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + STEP;
        loop {
            if self.stderr.text().lines().any(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what} within {STEP:?}; stderr:\n{}",
                self.stderr.text()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address whose port was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a probe socket")
}

/// A unique path under Cargo's scratch directory for integration tests.
fn scratch_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}-{name}", std::process::id()))
}

/// True when a log line is at debug level.
fn is_debug_line(line: &str) -> bool {
    line.split_whitespace().any(|word| word == "DEBUG")
}

// ---------------------------------------------------------------------------------------------
// HTTP and WebSocket clients

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .expect("HTTP client")
}

/// `POST /publish`; returns the status and the body.
async fn publish(http: &reqwest::Client, server: &Server, message: String) -> (u16, String) {
    let response = http
        .post(server.url("/publish"))
        .body(message)
        .send()
        .await
        .expect("POST /publish");
    let status = response.status().as_u16();
    (
        status,
        response.text().await.expect("publish response body"),
    )
}

async fn connect(server: &Server, path: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(STEP, connect_async(server.ws_url(path)))
        .await
        .expect("WebSocket connect timed out")
        .expect("WebSocket connect");
    ws
}

async fn send(ws: &mut Ws, text: &str) {
    tokio::time::timeout(STEP, ws.send(tungstenite::Message::text(text)))
        .await
        .expect("WebSocket send timed out")
        .expect("WebSocket send");
}

/// What a client sees next: a data frame as text, or a close frame.
#[derive(Debug)]
enum Received {
    Text(String),
    Close(Option<u16>),
    /// The stream ended without a close frame.
    End,
}

async fn receive(ws: &mut Ws) -> Received {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("nothing received from the WebSocket in time");
        return match next {
            None | Some(Err(_)) => Received::End,
            Some(Ok(tungstenite::Message::Text(text))) => Received::Text(text.as_str().to_owned()),
            Some(Ok(tungstenite::Message::Binary(data))) => {
                panic!("binary frame for a UTF-8 message: {data:?}")
            }
            Some(Ok(tungstenite::Message::Close(frame))) => {
                Received::Close(frame.map(|f| u16::from(f.code)))
            }
            Some(Ok(_)) => continue, // ping, pong
        };
    }
}

async fn receive_text(ws: &mut Ws) -> String {
    match receive(ws).await {
        Received::Text(text) => text,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// A received lhttp message, parsed the way a client must: header values run from the first
/// colon, trimmed; the body is everything after the first blank line.
#[derive(Debug)]
struct Lhttp {
    command: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Lhttp {
    fn parse(text: &str) -> Lhttp {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .or_else(|| text.strip_suffix("\r\n").map(|head| (head, "")))
            .unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap_or_default();
        let command = start
            .strip_prefix("LHTTP/1.0 ")
            .unwrap_or_else(|| panic!("not an lhttp message: {text:?}"))
            .to_owned();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Lhttp {
            command,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Subscribes to `channel` with a `request-id` and waits for the server's `ok` for it, so that
/// the subscription is known to be in place.
async fn subscribe(ws: &mut Ws, channel: &str, request_id: &str) {
    send(
        ws,
        &format!("LHTTP/1.0 chat\r\nsubscribe:{channel}\r\nrequest-id:{request_id}\r\n\r\n"),
    )
    .await;
    let answer = Lhttp::parse(&receive_text(ws).await);
    assert_eq!(answer.command, "ok", "answer to subscribe: {answer:?}");
    assert_eq!(answer.header("request-id"), Some(request_id), "{answer:?}");
}

// ---------------------------------------------------------------------------------------------
// 1. The embedded default configuration

#[test]
fn print_config_prints_the_commented_default_which_reads_back() {
    let printed = run({
        let mut c = lhttpd();
        c.arg("--print-config");
        c
    });
    assert!(printed.status.success(), "{}", printed.stderr);
    assert!(printed.stderr.is_empty(), "stderr: {}", printed.stderr);
    let default = printed.stdout;
    assert!(default.contains("[limits]"), "{default}");
    assert!(default.contains("max_message_size = 65536"), "{default}");
    assert!(default.lines().any(|l| l.starts_with('#')), "not commented");

    // The printed text is a valid configuration file as it is...
    let path = scratch_file("default.toml");
    std::fs::write(&path, &default).unwrap();
    let checked = run({
        let mut c = lhttpd();
        c.arg("--config").arg(&path).arg("--check-config");
        c
    });
    assert!(checked.status.success(), "{}", checked.stderr);
    assert!(checked.stdout.contains("65536"), "{}", checked.stdout);

    // ...and once edited, given by LHTTPD_CONFIG instead of the flag, the edit takes effect.
    let edited = default.replace("max_message_size = 65536", "max_message_size = 2048");
    assert_ne!(edited, default);
    std::fs::write(&path, &edited).unwrap();
    let checked = run({
        let mut c = lhttpd();
        c.env("LHTTPD_CONFIG", &path).arg("--check-config");
        c
    });
    let _ = std::fs::remove_file(&path);
    assert!(checked.status.success(), "{}", checked.stderr);
    assert!(checked.stdout.contains("2048"), "{}", checked.stdout);
    assert!(!checked.stdout.contains("65536"), "{}", checked.stdout);
}

// ---------------------------------------------------------------------------------------------
// 2. Bad configuration and flags

/// Asserts that lhttpd refused to run, with a message naming each of `names`, and no panic.
fn assert_refused(finished: &Finished, what: &str, names: &[&str]) {
    assert!(
        !finished.status.success() && finished.status.code().is_some(),
        "{what}: expected a non-zero exit code, got {}; stderr:\n{}",
        finished.status,
        finished.stderr
    );
    for name in names {
        assert!(
            finished.stderr.contains(name),
            "{what}: stderr does not name {name:?}:\n{}",
            finished.stderr
        );
    }
    for panic_sign in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(
            !finished.stderr.contains(panic_sign),
            "{what}: lhttpd panicked:\n{}",
            finished.stderr
        );
    }
}

#[test]
fn bad_config_files_and_flags_are_refused_with_a_clear_message() {
    let cases = [
        (
            "unknown key",
            "[limits]\nmax_mesage_size = 1024\n",
            "max_mesage_size",
        ),
        (
            "unknown section",
            "[limit]\nmax_message_size = 1024\n",
            "`limit`",
        ),
        (
            "wrong type",
            "[limits]\nmax_message_size = \"big\"\n",
            "max_message_size",
        ),
        ("invalid TOML", "[limits\nmax_message_size = 1024\n", "TOML"),
        (
            "invalid value",
            "[limits]\nmax_message_size = 0\n",
            "max_message_size",
        ),
    ];
    for (i, (what, text, key)) in cases.into_iter().enumerate() {
        let path = scratch_file(&format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let finished = run({
            let mut c = lhttpd();
            // Port 0: should the file ever be accepted, the server starts on no fixed port and
            // the bounded wait fails the test.
            c.arg("--config")
                .arg(&path)
                .args(["--listen", "127.0.0.1:0"]);
            c
        });
        let _ = std::fs::remove_file(&path);
        let names: &[&str] = if what == "invalid value" {
            &[key] // Checked after loading: the key, not the file, is at fault.
        } else {
            &[key, path.to_str().unwrap()]
        };
        assert_refused(&finished, what, names);
    }

    let missing = scratch_file("does-not-exist.toml");
    let finished = run({
        let mut c = lhttpd();
        c.arg("--config").arg(&missing);
        c
    });
    assert_refused(&finished, "missing file", &[missing.to_str().unwrap()]);

    let finished = run({
        let mut c = lhttpd();
        c.env("LHTTPD_LIMITS__MAX_CONECTIONS", "5")
            .args(["--listen", "127.0.0.1:0"]);
        c
    });
    assert_refused(
        &finished,
        "unknown key in the environment",
        &["max_conections"],
    );

    let flags: [(&str, &[&str], &str); 3] = [
        ("unknown flag", &["--bogus-flag"], "--bogus-flag"),
        ("bad address", &["--listen", "nowhere"], "nowhere"),
        ("missing value", &["--config"], "--config"),
    ];
    for (what, args, name) in flags {
        let finished = run({
            let mut c = lhttpd();
            c.args(args);
            c
        });
        assert_refused(&finished, what, &[name]);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Environment overrides

#[tokio::test]
async fn environment_variable_overrides_a_limit() {
    let server = Server::start(&[], &[("LHTTPD_LIMITS__MAX_MESSAGE_SIZE", "1024")]).await;
    let http = http_client();
    let message = |len: usize| format!("LHTTP/1.0 chat\r\npublish:room\r\n\r\n{}", "x".repeat(len));

    let (status, body) = publish(&http, &server, message(2000)).await;
    assert_eq!(
        status, 413,
        "2000-byte message over a 1024-byte limit: {body}"
    );

    let (status, body) = publish(&http, &server, message(500)).await;
    assert_eq!(status, 200, "500-byte message: {body}");
}

#[tokio::test]
async fn new_config_makes_fresh_secrets_and_token_mints_what_that_server_accepts() {
    let new_config = || {
        let finished = run({
            let mut c = lhttpd();
            c.arg("new-config");
            c
        });
        assert!(finished.status.success(), "{}", finished.stderr);
        finished.stdout
    };
    let (first, second) = (new_config(), new_config());
    let setting = |text: &str, name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("no {name} set"))
            .trim_matches('"')
            .to_owned()
    };
    for name in ["api_key", "hs256_secret"] {
        assert_eq!(setting(&first, name).len(), 64, "{name}");
        assert_ne!(
            setting(&first, name),
            setting(&second, name),
            "{name} is fresh"
        );
    }
    assert_eq!(setting(&first, "anonymous"), "false");
    assert!(!first.contains("OPEN TO EVERYONE"));
    let file = scratch_file("new-config.toml");
    std::fs::write(&file, &first).unwrap();
    let file = file.to_str().unwrap();

    let server = Server::start(&["--config", file], &[]).await;
    let minted = run({
        let mut c = lhttpd();
        c.args([
            "--config",
            file,
            "token",
            "--user",
            "ann",
            "--valid-secs",
            "60",
        ]);
        c
    });
    assert!(minted.status.success(), "{}", minted.stderr);
    let token = minted.stdout.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // The token opens the door; without it the server answers 401.
    let mut ws = connect(&server, &format!("/?token={token}")).await;
    subscribe(&mut ws, "room", "with-token").await;
    let mut stranger = connect(&server, "/").await;
    send(
        &mut stranger,
        "LHTTP/1.0 chat\r\nsubscribe:room\r\nrequest-id:no-token\r\n\r\n",
    )
    .await;
    let answer = Lhttp::parse(&receive_text(&mut stranger).await);
    assert_eq!(answer.header("status"), Some("401"), "{answer:?}");
    // A configuration without an HS256 secret cannot mint, and says why.
    let refused = run({
        let mut c = lhttpd();
        c.args(["token", "--user", "ann"]);
        c
    });
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr.contains("hs256_secret"),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let server = Server::start(&["--log-format", "json"], &[]).await;
    server
        .wait_for_log_line("saying it listens", |l| l.contains("listening"))
        .await;
    let log = server.stderr.text();
    let mut lines = 0;
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["level"].is_string(), "{line}");
        assert!(value["fields"]["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines > 0);
    let finished = run({
        let mut c = lhttpd();
        c.args(["--log-format", "yaml", "--check-config"]);
        c
    });
    assert_eq!(
        finished.status.code(),
        Some(2),
        "a bad flag is a usage error"
    );
}

#[tokio::test]
async fn lhttpd_listen_variable_replaces_the_flag() {
    let server = Server::start_with(&[], &[], Listen::Env).await;
    // start_with has already seen /healthz answer on the address given only by LHTTPD_LISTEN;
    // the WebSocket side is there too.
    let mut ws = connect(&server, "/").await;
    subscribe(&mut ws, "room", "env").await;
}

// ---------------------------------------------------------------------------------------------
// 4. Graceful shutdown

#[tokio::test]
async fn sighup_keeps_the_server_and_its_clients() {
    let server = Server::start(&[], &[]).await;
    let mut client = connect(&server, "/").await;
    subscribe(&mut client, "room", "before").await;
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    server
        .wait_for_log_line("about SIGHUP", |l| l.contains("SIGHUP"))
        .await;
    // The same connection still works, and so does the server.
    subscribe(&mut client, "room2", "after").await;
    let http = http_client();
    let (status, _) = publish(
        &http,
        &server,
        "LHTTP/1.0 chat\r\npublish:room\r\n\r\nstill here".into(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        Lhttp::parse(&receive_text(&mut client).await).body,
        "still here"
    );
}

/// Sends SIGHUP and waits for the log line of its outcome (the `nth` one that `pred` holds for).
async fn hang_up(server: &Server, what: &str, nth: usize, pred: impl Fn(&str) -> bool) {
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + STEP;
    while server.stderr.text().lines().filter(|l| pred(l)).count() < nth {
        assert!(
            Instant::now() < deadline,
            "no log line {what} within {STEP:?}; stderr:\n{}",
            server.stderr.text()
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn sighup_reloads_rules_keys_and_limits_and_names_what_needs_a_restart() {
    let (old_key, new_key) = (
        "an old API key of forty characters, yes!",
        "the new API key, also forty characters!!",
    );
    let config = scratch_file("reload.toml");
    let write = |key: &str, channels: &str, max_connections: u32| {
        std::fs::write(
            &config,
            format!(
                "[server]\napi_key = \"{key}\"\nping_interval_ms = 200\nidle_timeout_ms = 5000\n\
                 [limits]\nmax_connections = {max_connections}\n\
                 [[auth.rules]]\nchannels = \"{channels}\"\nsubscribe = true\npublish = true\nanonymous = true\n"
            ),
        )
        .unwrap();
    };
    write(old_key, "*", 1000);
    let server = Server::start(&["--config", config.to_str().unwrap()], &[]).await;
    let mut client = connect(&server, "/").await;
    subscribe(&mut client, "news", "1").await;
    subscribe(&mut client, "open", "2").await;

    // Only `open` is allowed now, with a new key; the connection limit cannot change live.
    write(new_key, "open", 500);
    // The settings that need a restart are logged last.
    hang_up(&server, "of settings that need a restart", 1, |l| {
        l.contains("need a restart")
    })
    .await;
    let log = server.stderr.text();
    let applied = log
        .lines()
        .find(|l| l.contains("settings now in force"))
        .unwrap();
    assert!(
        applied.contains("auth.rules") && applied.contains("server.api_key"),
        "{applied}"
    );
    assert!(!applied.contains("max_connections"), "{applied}");
    let needs_restart = log
        .lines()
        .find(|l| l.contains("need a restart"))
        .expect("restart line");
    assert!(
        needs_restart.contains("limits.max_connections"),
        "{needs_restart}"
    );
    assert!(
        !log.contains(new_key) && !log.contains(old_key),
        "keys printed:\n{log}"
    );

    // The quiet connection loses the subscription the new rules forbid, within a ping interval,
    // and is told; it keeps the other.
    let told = Lhttp::parse(&receive_text(&mut client).await);
    assert_eq!(
        (told.command.as_str(), told.header("channel")),
        ("unsubscribed", Some("news")),
        "{told:?}"
    );
    let http = http_client();
    let post = |key: &'static str, channel: &str| {
        http.post(server.url("/publish"))
            .bearer_auth(key)
            .body(format!(
                "LHTTP/1.0 chat\r\npublish:{channel}\r\n\r\nvia {channel}"
            ))
            .send()
    };
    assert_eq!(
        post(old_key, "open").await.unwrap().status(),
        401,
        "the old key still works"
    );
    assert_eq!(post(new_key, "news").await.unwrap().status(), 200);
    assert_eq!(post(new_key, "open").await.unwrap().status(), 200);
    assert_eq!(
        Lhttp::parse(&receive_text(&mut client).await).body,
        "via open"
    );
    // A subscribe the new rules forbid is refused.
    send(
        &mut client,
        "LHTTP/1.0 chat\r\nsubscribe:news\r\nrequest-id:3\r\n\r\n",
    )
    .await;
    let refused = Lhttp::parse(&receive_text(&mut client).await);
    assert_eq!(refused.header("status"), Some("403"), "{refused:?}");

    // A file that would not start is refused whole: the key and rules in force stay.
    std::fs::write(
        &config,
        "[server]\napi_key = \"short\"\n[limits]\nmax_subscriptions = \"many\"\n",
    )
    .unwrap();
    hang_up(&server, "of a refused reload", 1, |l| {
        l.contains("reload refused, nothing changed")
    })
    .await;
    assert_eq!(post(new_key, "open").await.unwrap().status(), 200);
    assert_eq!(
        Lhttp::parse(&receive_text(&mut client).await).body,
        "via open"
    );
    let _ = std::fs::remove_file(&config);
}

#[tokio::test]
async fn sigterm_delivers_everything_queued_then_closes_1012_and_exits_0() {
    const N: usize = 200;
    let mut server = Server::start(&[], &[]).await;
    let mut subscriber = connect(&server, "/").await;
    subscribe(&mut subscriber, "room", "1").await;

    let http = http_client();
    for i in 0..N {
        let message = format!("LHTTP/1.0 chat\r\npublish:room\r\n\r\nmsg-{i}");
        let (status, body) = publish(&http, &server, message).await;
        assert_eq!(status, 200, "publish {i}: {body}");
        assert!(body.contains("\"deliveries\":1"), "publish {i}: {body}");
    }

    server.terminate();

    for i in 0..N {
        let text = match receive(&mut subscriber).await {
            Received::Text(text) => text,
            other => panic!("message {i} of {N} was not delivered before {other:?}"),
        };
        let message = Lhttp::parse(&text);
        assert_eq!(message.command, "chat", "{text:?}");
        assert_eq!(message.header("publish"), Some("room"), "{text:?}");
        assert_eq!(message.body, format!("msg-{i}"), "out of order: {text:?}");
    }
    match receive(&mut subscriber).await {
        Received::Close(code) => {
            assert_eq!(code, Some(u16::from(CloseCode::Restart)), "close code")
        }
        other => panic!("expected a close frame with code 1012, got {other:?}"),
    }
    // Reading on completes the closing handshake (tungstenite answers the close frame).
    let deadline = tokio::time::Instant::now() + STEP;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, subscriber.next()).await {}

    let status = server.exit_within(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        server.stderr_when_closed()
    );
    let refused = TcpStream::connect_timeout(&server.addr, STEP)
        .expect_err("the port still accepts connections after lhttpd exited");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Chat, as with the original JavaScript SDK

#[tokio::test]
async fn two_websocket_clients_chat_through_a_channel() {
    let server = Server::start(&[], &[]).await;
    let mut alice = connect(&server, "/").await;
    let mut bob = connect(&server, "/").await;
    subscribe(&mut alice, "chatroom", "a1").await;
    subscribe(&mut bob, "chatroom", "b1").await;

    let hello = "LHTTP/1.0 chat\r\npublish:chatroom\r\n\r\nhello";
    send(&mut alice, hello).await;
    assert_eq!(receive_text(&mut bob).await, hello, "what bob received");
    assert_eq!(receive_text(&mut alice).await, hello, "what alice received");

    // The original SDK subscribes without a request-id: no answer, and the subscription works.
    let mut carol = connect(&server, "/").await;
    send(&mut carol, "LHTTP/1.0 chat\r\nsubscribe:chatroom\r\n\r\n").await;
    // Messages on one connection are handled in order: once this one is answered (whatever the
    // answer), the subscription above is in place.
    send(&mut carol, "LHTTP/1.0 chat\r\nrequest-id:c1\r\n\r\n").await;
    let answer = Lhttp::parse(&receive_text(&mut carol).await);
    assert_eq!(answer.header("request-id"), Some("c1"), "{answer:?}");
    let hi = "LHTTP/1.0 chat\r\npublish:chatroom\r\n\r\nhi carol";
    send(&mut bob, hi).await;
    assert_eq!(receive_text(&mut carol).await, hi, "what carol received");
    assert_eq!(receive_text(&mut alice).await, hi, "what alice received");
    assert_eq!(receive_text(&mut bob).await, hi, "what bob received");
}

#[tokio::test]
async fn chat_page_is_served_at_root() {
    let server = Server::start(&[], &[]).await;
    let response = http_client()
        .get(server.url("/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.expect("page body");
    assert!(page.to_ascii_lowercase().starts_with("<!doctype html>"));
    for id in ["messages", "input", "send", "status", "nick"] {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "no #{id} on the page"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Logging

/// Makes the server do something worth logging at debug level: a connection that subscribes.
async fn exercise(server: &Server) {
    let mut ws = connect(server, "/chat").await;
    subscribe(&mut ws, "logs", "1").await;
}

#[tokio::test]
async fn verbose_flag_enables_debug_logs() {
    let server = Server::start(&["-v"], &[]).await;
    exercise(&server).await;
    server
        .wait_for_log_line("at DEBUG level", is_debug_line)
        .await;
}

#[tokio::test]
async fn rust_log_enables_debug_logs() {
    let server = Server::start(&[], &[("RUST_LOG", "debug")]).await;
    exercise(&server).await;
    server
        .wait_for_log_line("at DEBUG level", is_debug_line)
        .await;
}

#[tokio::test]
async fn default_logs_never_contain_message_bodies() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("secret-marker-{}-{nanos}", std::process::id());
    let mut server = Server::start(&[], &[]).await;
    let mut subscriber = connect(&server, "/").await;
    subscribe(&mut subscriber, "private", "1").await;

    // Published once over WebSocket and once over HTTP, each with the marker in the body and in
    // a header; both delivered, so both went all the way through the server.
    let mut publisher = connect(&server, "/").await;
    let over_ws = format!("LHTTP/1.0 chat\r\npublish:private\r\nnote:{marker}\r\n\r\nws {marker}");
    send(&mut publisher, &over_ws).await;
    assert_eq!(receive_text(&mut subscriber).await, over_ws);
    let over_http =
        format!("LHTTP/1.0 chat\r\npublish:private\r\nnote:{marker}\r\n\r\nhttp {marker}");
    let (status, body) = publish(&http_client(), &server, over_http.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(receive_text(&mut subscriber).await, over_http);
    // And a malformed one, which the server answers with an error.
    send(&mut publisher, &format!("NOT-LHTTP {marker}")).await;
    let answer = Lhttp::parse(&receive_text(&mut publisher).await);
    assert_eq!(answer.command, "error", "{answer:?}");

    // Stop the server so that its log is complete.
    server.terminate();
    let status = server.exit_within(STEP).await;
    assert!(status.success(), "exit status {status}");
    let log = server.stderr_when_closed();
    assert!(
        log.contains("listening"),
        "no startup line in the log:\n{log}"
    );
    assert!(
        !log.contains(&marker),
        "a message leaked into the log:\n{log}"
    );
    assert!(
        !log.lines().any(is_debug_line),
        "debug lines at the default level:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream allowance from the command line

/// A one-shot HTTP back end: answers the first request with `200 stored` and reports the
/// request line it received.
async fn one_shot_backend() -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&request).to_string();
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nstored")
            .await
            .unwrap();
        let _ = tx.send(text.lines().next().unwrap_or_default().to_owned());
    });
    (addr, rx)
}

#[tokio::test]
async fn upstream_allow_flag_opens_one_back_end() {
    let (backend, request_line) = one_shot_backend().await;
    let prefix = format!("http://{backend}/chat/");
    let server = Server::start(&["--upstream-allow", &prefix], &[]).await;
    let mut ws = connect(&server, "/").await;
    // Outside the prefix: refused, and the back end is not called.
    send(
        &mut ws,
        &format!("LHTTP/1.0 chat\r\nupstream:POST http://{backend}/admin\r\n\r\nx"),
    )
    .await;
    let refused = Lhttp::parse(&receive_text(&mut ws).await);
    assert_eq!(
        (refused.command.as_str(), refused.header("status")),
        ("error", Some("403"))
    );
    // Under the prefix: called, and the answer relayed.
    send(
        &mut ws,
        &format!("LHTTP/1.0 chat\r\nupstream:POST {prefix}record\r\n\r\nhello"),
    )
    .await;
    let answer = Lhttp::parse(&receive_text(&mut ws).await);
    assert_eq!(answer.command, "chat");
    assert_eq!(answer.header("status"), Some("200"));
    assert_eq!(answer.body, "stored");
    let line = tokio::time::timeout(STEP, request_line)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "POST /chat/record HTTP/1.1");
}

#[tokio::test]
async fn upstream_is_closed_without_an_allowance() {
    let server = Server::start(&[], &[]).await;
    let mut ws = connect(&server, "/").await;
    send(
        &mut ws,
        "LHTTP/1.0 chat\r\nupstream:GET http://127.0.0.1:9/\r\n\r\n",
    )
    .await;
    let refused = Lhttp::parse(&receive_text(&mut ws).await);
    assert_eq!(refused.header("status"), Some("403"));
}

// ---------------------------------------------------------------------------------------------
// 7. Cluster flags (the cluster itself is tested against a real nats-server in lhttp-server)

#[test]
fn nats_flags_replace_the_configured_servers_and_bad_urls_are_refused() {
    let checked = run({
        let mut c = lhttpd();
        c.env("LHTTPD_CLUSTER__NATS", "nats://from-env:4222")
            .args([
                "--nats",
                "nats://10.0.0.1:4222",
                "--nats",
                "nats://10.0.0.2:4222",
            ])
            .arg("--check-config");
        c
    });
    assert!(checked.status.success(), "{}", checked.stderr);
    assert!(
        checked.stdout.contains("nats://10.0.0.1:4222"),
        "{}",
        checked.stdout
    );
    assert!(
        checked.stdout.contains("nats://10.0.0.2:4222"),
        "{}",
        checked.stdout
    );
    assert!(!checked.stdout.contains("from-env"), "{}", checked.stdout);

    let finished = run({
        let mut c = lhttpd();
        c.args(["--nats", "nats://[bad", "--listen", "127.0.0.1:0"]);
        c
    });
    assert_refused(&finished, "bad NATS URL", &["cluster.nats", "nats://[bad"]);
}

/// Pointed at a NATS server that is not there, lhttpd still starts, serves, and says so on
/// /healthz (503 degraded) instead of failing or hanging.
#[tokio::test]
async fn lhttpd_starts_degraded_when_nats_is_unreachable() {
    let nats = format!("nats://127.0.0.1:{}", free_addr().port());
    let addr = free_addr();
    let mut child = lhttpd()
        .args(["--nats", &nats, "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lhttpd");
    let stderr = Captured::collect(child.stderr.take().unwrap());
    let server = Server {
        child,
        addr,
        stderr,
    };
    let http = http_client();
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(response) = http.get(server.url("/healthz")).send().await {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 503, "{body}");
            assert_eq!(body, r#"{"nats":"disconnected","status":"degraded"}"#);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lhttpd did not answer /healthz within {STARTUP:?}; stderr:\n{}",
            server.stderr.text()
        );
        tokio::time::sleep(POLL).await;
    }
    // Local traffic is served meanwhile.
    let mut ws = connect(&server, "/").await;
    subscribe(&mut ws, "room", "degraded").await;
}

// ---------------------------------------------------------------------------------------------
// History across restarts

/// Reads the last messages of `channel` with a `history` read: (epoch, offsets, bodies).
async fn read_history(ws: &mut Ws, channel: &str) -> (String, Vec<u64>, Vec<String>) {
    send(
        ws,
        &format!("LHTTP/1.0 history\r\nchannel:{channel}\r\nrecent:100\r\n\r\n"),
    )
    .await;
    let answer = Lhttp::parse(&receive_text(ws).await);
    assert_eq!(answer.command, "history", "{answer:?}");
    let count: usize = answer.header("count").unwrap().parse().unwrap();
    let epoch = answer.header("epoch").expect("an epoch").to_owned();
    let mut offsets = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..count {
        let message = Lhttp::parse(&receive_text(ws).await);
        assert_eq!(message.header("epoch"), Some(epoch.as_str()), "{message:?}");
        offsets.push(message.header("offset").unwrap().parse().unwrap());
        bodies.push(message.body);
    }
    (epoch, offsets, bodies)
}

#[tokio::test]
async fn history_survives_a_restart_with_its_epoch_and_a_crash_gives_a_new_epoch() {
    let store = scratch_file("history.redb");
    let config = scratch_file("history.toml");
    std::fs::write(
        &config,
        format!(
            "[[channels]]\npattern = \"room.*\"\nhistory_size = 100\n\n[[channels]]\npattern = \"small.*\"\nhistory_size = 3\n\n[history]\npath = {:?}\n",
            store.display().to_string()
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let http = http_client();
    let chat = |body: &str| format!("LHTTP/1.0 chat\r\npublish:room.a\r\n\r\n{body}");

    let mut server = Server::start(&args, &[]).await;
    for i in 1..=5 {
        assert_eq!(publish(&http, &server, chat(&format!("m{i}"))).await.0, 200);
    }
    // A channel that keeps 3 overwrites the oldest: only the last 3 come back.
    for i in 1..=10 {
        let message = format!("LHTTP/1.0 chat\r\npublish:small.x\r\n\r\ns{i}");
        assert_eq!(publish(&http, &server, message).await.0, 200);
    }
    let mut ws = connect(&server, "/").await;
    let (epoch, offsets, _) = read_history(&mut ws, "room.a").await;
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    drop(ws);
    server.terminate();
    assert!(server.exit_within(STEP).await.success());

    // A clean stop keeps everything, epoch included: a client recovers across the restart.
    let server = Server::start(&args, &[]).await;
    let mut ws = connect(&server, "/").await;
    assert_eq!(
        read_history(&mut ws, "room.a").await,
        (
            epoch.clone(),
            vec![1, 2, 3, 4, 5],
            vec![
                "m1".into(),
                "m2".into(),
                "m3".into(),
                "m4".into(),
                "m5".into()
            ]
        )
    );
    send(
        &mut ws,
        &format!("LHTTP/1.0 chat\r\nsubscribe:room.a\r\nsince:3\r\nepoch:{epoch}\r\n\r\n"),
    )
    .await;
    let answer = Lhttp::parse(&receive_text(&mut ws).await);
    assert_eq!(answer.command, "subscribed", "{answer:?}");
    assert_eq!(answer.header("recovered"), Some("true"), "{answer:?}");
    assert_eq!(answer.header("count"), Some("2"), "{answer:?}");
    for expected in ["4", "5"] {
        let missed = Lhttp::parse(&receive_text(&mut ws).await);
        assert_eq!(missed.header("offset"), Some(expected), "{missed:?}");
    }
    assert_eq!(publish(&http, &server, chat("m6")).await.0, 200);
    let live = Lhttp::parse(&receive_text(&mut ws).await);
    assert_eq!(live.header("offset"), Some("6"), "{live:?}");
    assert_eq!(live.header("epoch"), Some(epoch.as_str()), "{live:?}");
    drop(ws);
    // Written within the store's batch interval; then the process dies without a goodbye.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(server);

    // After a crash the last messages sent may not have been written: a new epoch, so that no
    // client takes a rewritten offset for one it has. What was written is still there.
    let server = Server::start(&args, &[]).await;
    let mut ws = connect(&server, "/").await;
    let (new_epoch, offsets, bodies) = read_history(&mut ws, "room.a").await;
    assert_ne!(new_epoch, epoch);
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6]);
    assert_eq!(bodies.last().map(String::as_str), Some("m6"));
    send(
        &mut ws,
        &format!("LHTTP/1.0 chat\r\nsubscribe:room.a\r\nsince:6\r\nepoch:{epoch}\r\n\r\n"),
    )
    .await;
    let answer = Lhttp::parse(&receive_text(&mut ws).await);
    assert_eq!(answer.header("recovered"), Some("false"), "{answer:?}");
    drop(ws);
    drop(server);
    let _ = std::fs::remove_file(&store);
    let _ = std::fs::remove_file(&config);
}
