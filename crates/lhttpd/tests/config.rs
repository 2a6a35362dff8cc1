//! The configuration as an operator meets it, through the real `lhttpd` binary:
//! `--check-config` refuses exactly what start-up refuses, prints the effective configuration
//! as TOML with its secrets hidden, and survives a reader that stops early; `LHTTPD_*`
//! variables that name no setting are refused, and text settings take their text as it is.
//!
//! Every command is bounded by a deadline and killed after it.

use std::{
    io::Read,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

const LHTTPD: &str = env!("CARGO_BIN_EXE_lhttpd");
/// Time for a debug build to start, check or answer on a busy two-core machine.
const STEP: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// A command for `lhttpd` without the test's own `LHTTPD_*` or `RUST_LOG` variables, showing a
/// backtrace if it ever panics.
fn lhttpd() -> Command {
    let mut command = Command::new(LHTTPD);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("LHTTPD_") || text == "RUST_LOG" {
            command.env_remove(&name);
        }
    }
    command.env("RUST_BACKTRACE", "1").stdin(Stdio::null());
    command
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` to exit within [`STEP`]; kills it and fails otherwise.
fn wait(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: lhttpd did not exit within {STEP:?} (it accepted the configuration?)");
        }
        thread::sleep(POLL);
    }
}

/// Runs a command expected to exit by itself.
fn run(mut command: Command, what: &str) -> Finished {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lhttpd");
    let stdout = read_all(child.stdout.take().expect("stdout"));
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let status = wait(&mut child, what);
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn scratch_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("config-{}-{name}", std::process::id()))
}

/// Writes `text` to a scratch file named `name`.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = scratch_file(name);
    std::fs::write(&path, text).expect("write config file");
    path
}

/// `lhttpd --config FILE --check-config`.
fn check(path: &PathBuf) -> Finished {
    let mut c = lhttpd();
    c.arg("--config").arg(path).arg("--check-config");
    run(c, "--check-config")
}

/// `lhttpd --config FILE` on port 0, expected to refuse to start.
fn start_refused(path: &PathBuf) -> Finished {
    let mut c = lhttpd();
    c.arg("--config")
        .arg(path)
        .args(["--listen", "127.0.0.1:0"]);
    run(c, "start")
}

fn assert_no_panic(finished: &Finished, what: &str) {
    for sign in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(
            !finished.stderr.contains(sign),
            "{what}: lhttpd panicked:\n{}",
            finished.stderr
        );
    }
}

#[test]
fn check_config_refuses_every_file_that_start_up_refuses_with_the_same_message() {
    let not_pem = config_file("not-pem.pem", "this is not a PEM key\n");
    let missing = scratch_file("no-such-secret");
    let cases = [
        (
            "short HS256 secret",
            "[auth]\nhs256_secret = \"short\"\n".to_owned(),
            "32 bytes",
        ),
        (
            "missing secret file",
            format!("[auth]\nhs256_secret_file = {:?}\n", missing.display()),
            "auth.hs256_secret_file",
        ),
        (
            "RS256 key that is not PEM",
            format!("[auth]\nrs256_public_key_file = {:?}\n", not_pem.display()),
            "auth.rs256_public_key",
        ),
        (
            "unset secret variable",
            "[auth]\nhs256_secret_env = \"LHTTP_TEST_SURELY_UNSET_SECRET\"\n".to_owned(),
            "LHTTP_TEST_SURELY_UNSET_SECRET",
        ),
        (
            "gateway path without slashes",
            "[[gateway]]\npath = \"api\"\nchannel = \"api\"\nqueue = \"workers\"\n".to_owned(),
            "gateway path \"api\"",
        ),
        (
            "missing NATS credentials file",
            format!(
                "[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\ncredentials_file = {:?}\n",
                missing.display()
            ),
            "cluster.credentials_file",
        ),
        (
            "a redacted secret fed back",
            "[server]\napi_key = \"<redacted>\"\n".to_owned(),
            "server.api_key holds \"<redacted>\"",
        ),
    ];
    for (i, (what, text, reason)) in cases.into_iter().enumerate() {
        let path = config_file(&format!("refused-{i}.toml"), &text);
        let checked = check(&path);
        let started = start_refused(&path);
        let _ = std::fs::remove_file(&path);
        for (how, finished) in [("--check-config", &checked), ("start", &started)] {
            assert_eq!(
                finished.status.code(),
                Some(1),
                "{what} ({how}): stderr:\n{}",
                finished.stderr
            );
            assert!(
                finished.stderr.contains(reason),
                "{what} ({how}): stderr does not say {reason:?}:\n{}",
                finished.stderr
            );
            assert_no_panic(finished, what);
        }
        assert!(checked.stdout.is_empty(), "{what}: {}", checked.stdout);
        assert_eq!(checked.stderr, started.stderr, "{what}");
    }
    let _ = std::fs::remove_file(&not_pem);
}

/// Secrets of the configuration below, none of which may be printed.
const SECRETS: [&str; 5] = [
    "api key 0123456789 abcdef",
    "hs256 shared secret of 32 bytes or more",
    "nats password 123",
    "nats token 456",
    "url-password",
];

fn configuration_with_secrets() -> String {
    format!(
        r#"[server]
api_key = "{}"
allowed_origins = ["https://chat.example"]

[limits]
max_connections = 77

[upstream]
allow = ["http://127.0.0.1:9000/api"]
[upstream.routes]
record = "http://127.0.0.1:9000/record"

[cluster]
nats = ["nats://backend:{}@127.0.0.1:4222"]
user = "lhttp"
password = "{}"
token = "{}"

[[gateway]]
path = "/api/"
channel = "api"
queue = "workers"

[auth]
anonymous = false
hs256_secret = "{}"
audience = "lhttp"

[[auth.rules]]
channels = "room.*"
subscribe = true
"#,
        SECRETS[0], SECRETS[4], SECRETS[2], SECRETS[3], SECRETS[1]
    )
}

#[test]
fn check_config_prints_toml_that_reads_back_with_the_secrets_redacted() {
    let path = config_file("secrets.toml", &configuration_with_secrets());
    let printed = check(&path);
    assert_eq!(printed.status.code(), Some(0), "{}", printed.stderr);
    let text = printed.stdout;
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret:?} printed:\n{text}");
    }
    for line in [
        "api_key = \"<redacted>\"",
        "hs256_secret = \"<redacted>\"",
        "password = \"<redacted>\"",
        "token = \"<redacted>\"",
        "nats = [\"nats://<redacted>@127.0.0.1:4222\"]",
        "user = \"lhttp\"",
        "max_connections = 77",
        "max_message_size = 65536",
        "audience = \"lhttp\"",
        "[[gateway]]",
        "[[auth.rules]]",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    assert!(!text.contains("Config {"), "a debug dump:\n{text}");

    // Fed back as it is, the placeholders are refused, naming the first one.
    let printed_path = config_file("printed.toml", &text);
    let fed_back = check(&printed_path);
    assert_eq!(fed_back.status.code(), Some(1), "{}", fed_back.stdout);
    assert!(
        fed_back.stderr.contains("holds \"<redacted>\""),
        "{}",
        fed_back.stderr
    );

    // With the secrets put back, it is the same configuration: printed again, identically.
    let restored = text
        .replace(
            "api_key = \"<redacted>\"",
            &format!("api_key = {:?}", SECRETS[0]),
        )
        .replace(
            "hs256_secret = \"<redacted>\"",
            &format!("hs256_secret = {:?}", SECRETS[1]),
        )
        .replace(
            "password = \"<redacted>\"",
            &format!("password = {:?}", SECRETS[2]),
        )
        .replace(
            "token = \"<redacted>\"",
            &format!("token = {:?}", SECRETS[3]),
        )
        .replace(
            "nats://<redacted>@",
            &format!("nats://backend:{}@", SECRETS[4]),
        );
    std::fs::write(&printed_path, &restored).expect("write");
    let again = check(&printed_path);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&printed_path);
    assert_eq!(again.status.code(), Some(0), "{}", again.stderr);
    assert_eq!(again.stdout, text);
}

#[test]
fn a_reader_that_stops_early_is_not_a_crash() {
    for flag in ["--check-config", "--print-config"] {
        let mut child = lhttpd()
            .arg(flag)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lhttpd");
        // As `| head -0` does: the reading end is closed before lhttpd writes.
        drop(child.stdout.take());
        let stderr = read_all(child.stderr.take().expect("stderr"));
        let status = wait(&mut child, flag);
        let finished = Finished {
            status,
            stdout: String::new(),
            stderr: stderr.join().expect("stderr reader"),
        };
        assert_no_panic(&finished, flag);
        assert_eq!(status.code(), Some(0), "{flag}: {}", finished.stderr);
    }
}

#[test]
fn a_variable_that_names_no_setting_stops_start_up_with_the_right_name() {
    let cases = [
        (
            "LHTTPD_AUTH_ANONYMOUS",
            "false",
            "unknown setting LHTTPD_AUTH_ANONYMOUS (auth_anonymous): did you mean \
             LHTTPD_AUTH__ANONYMOUS?",
        ),
        (
            "LHTTPD_LIMITS_MAX_CONNECTIONS",
            "5",
            "unknown setting LHTTPD_LIMITS_MAX_CONNECTIONS (limits_max_connections): did you \
             mean LHTTPD_LIMITS__MAX_CONNECTIONS?",
        ),
    ];
    for (name, value, message) in cases {
        let mut c = lhttpd();
        c.env(name, value).args(["--listen", "127.0.0.1:0"]);
        let finished = run(c, name);
        assert_eq!(
            finished.status.code(),
            Some(1),
            "{name}: {}",
            finished.stderr
        );
        assert_eq!(finished.stderr.trim(), format!("lhttpd: {message}"));
    }
}

#[tokio::test]
async fn text_settings_from_the_environment_keep_their_text() {
    let key = "12345678901234567890";
    let env = [
        ("LHTTPD_SERVER__API_KEY", key),
        ("LHTTPD_AUTH__ISSUER", "true"),
        ("LHTTPD_LIMITS__MAX_CONNECTIONS", "50"),
        ("LHTTPD_AUTH__ANONYMOUS", "false"),
        ("LHTTPD_AUTH__HS256_SECRET_ENV", "LHTTPD_JWT_SECRET"),
        ("LHTTPD_JWT_SECRET", "a shared secret of at least 32 bytes"),
        // Passed on by the JavaScript SDK's test harness; not a setting, and harmless.
        ("LHTTPD_BIN", "/usr/local/bin/lhttpd"),
    ];
    let mut c = lhttpd();
    c.envs(env).arg("--check-config");
    let checked = run(c, "--check-config");
    assert_eq!(checked.status.code(), Some(0), "{}", checked.stderr);
    for line in [
        "issuer = \"true\"",
        "max_connections = 50",
        "anonymous = false",
        "hs256_secret_env = \"LHTTPD_JWT_SECRET\"",
    ] {
        assert!(
            checked.stdout.lines().any(|l| l == line),
            "no line {line:?} in:\n{}",
            checked.stdout
        );
    }

    // The all-digit key is the key that POST /publish wants.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = lhttpd()
        .envs(env)
        .env("LHTTPD_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lhttpd");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .expect("HTTP client");
    let url = format!("http://127.0.0.1:{port}/publish");
    let message = "LHTTP/1.0 chat\r\npublish:room\r\n\r\nhi";
    let deadline = Instant::now() + STEP;
    let status = loop {
        let sent = http.post(&url).bearer_auth(key).body(message).send().await;
        if let Ok(response) = sent {
            break response.status().as_u16();
        }
        if let Some(exited) = child.try_wait().expect("try_wait") {
            panic!("lhttpd exited at start-up: {exited}");
        }
        assert!(Instant::now() < deadline, "lhttpd did not answer");
        tokio::time::sleep(POLL).await;
    };
    let without = http
        .post(&url)
        .bearer_auth("12345678901234567891")
        .body(message)
        .send()
        .await
        .expect("POST /publish")
        .status()
        .as_u16();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((status, without), (200, 401));
}
