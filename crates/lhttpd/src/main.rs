//! `lhttpd`: the lhttp server. Reads the configuration (embedded default, file, environment,
//! flags), sets up logging, and runs [`lhttp_server::Server`] until SIGINT or SIGTERM.

mod pages;
mod settings;

use std::{
    io::{IsTerminal, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{ArgAction, CommandFactory as _, Parser};
use lhttp_server::Server;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's allocator: a message's buffers are allocated by the thread that
/// reads it and freed by the one that writes it to a subscriber, which overflows glibc's
/// per-thread caches into its locked arenas. 13% fewer instructions per message one to one,
/// for 0.4 KiB more per idle connection (docs/performance.md, "Design decisions and the
/// measurements behind them").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The lhttp real-time messaging server.
#[derive(Debug, Parser)]
#[command(name = "lhttpd", version, about)]
struct Args {
    /// Address to listen on (overrides [server] listen).
    #[arg(
        long,
        env = "LHTTPD_LISTEN",
        hide_env_values = true,
        value_name = "ADDR"
    )]
    listen: Option<SocketAddr>,

    /// Serve GET /metrics and GET /healthz on this address instead of the main port (overrides
    /// [server] metrics_listen).
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// TOML configuration file.
    #[arg(
        long,
        env = "LHTTPD_CONFIG",
        hide_env_values = true,
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// Allow clients to call HTTP back ends under this URL prefix with the `upstream` header
    /// (repeatable; adds to [upstream] allow).
    #[arg(long = "upstream-allow", value_name = "URL_PREFIX")]
    upstream_allow: Vec<String>,

    /// Join a cluster through this NATS server, e.g. nats://127.0.0.1:4222 (repeatable;
    /// replaces [cluster] nats).
    #[arg(long = "nats", value_name = "URL")]
    nats: Vec<String>,

    /// Print the commented default configuration and exit.
    #[arg(long)]
    print_config: bool,

    /// Check the configuration as start-up does (keys and files included), print the effective
    /// configuration as TOML with secrets shown as "<redacted>", and exit.
    #[arg(long)]
    check_config: bool,

    /// More logging: -v for debug, -vv for trace. RUST_LOG, when set, takes precedence.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,

    /// How log lines are written to standard error: `text` for people, `json` (one object per
    /// line: timestamp, level, target, fields) for log collectors.
    #[arg(
        long = "log-format",
        env = "LHTTPD_LOG_FORMAT",
        hide_env_values = true,
        value_name = "FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Tool>,
}

/// What lhttpd does besides serving.
#[derive(Debug, clap::Subcommand)]
enum Tool {
    /// Print a token (JWT) a server with this configuration accepts, signed with its
    /// auth.hs256_secret: for trying authentication and channel rules.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// A role (`roles`), matched by `roles` in [[auth.rules]] (repeatable).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// A channel pattern the user may subscribe to besides what the rules allow
        /// (repeatable).
        #[arg(long, value_name = "PATTERN")]
        subscribe: Vec<String>,
        /// A channel pattern the user may publish to besides what the rules allow (repeatable).
        #[arg(long, value_name = "PATTERN")]
        publish: Vec<String>,
        /// The patterns given are the only channels the user may use, whatever the rules say.
        #[arg(long)]
        only: bool,
        /// Seconds until the token expires.
        #[arg(long = "valid-secs", value_name = "SECONDS", default_value_t = 3600)]
        valid_secs: u64,
    },
    /// Print the default configuration with fresh random secrets (server.api_key,
    /// auth.hs256_secret) and anonymous connections off: a start for a server that needs
    /// tokens (make them with `lhttpd --config FILE token --user NAME`).
    NewConfig,
}

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.print_config {
        print_stdout(settings::DEFAULT_CONFIG)
    } else if let Some(Tool::NewConfig) = args.command {
        settings::with_fresh_secrets(settings::DEFAULT_CONFIG).and_then(|text| print_stdout(&text))
    } else {
        init_logging(args.verbose, args.log_format);
        run(args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lhttpd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to standard output. A reader that stops early (`lhttpd --check-config | head`)
/// is not an error: what it wanted, it has.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to standard output"),
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().with_ansi(false).init(),
        LogFormat::Text => {
            // Colour only on a terminal: log files and journald get plain text.
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            logs.with_ansi(ansi).init();
        }
    }
}

/// The configuration as the command line, the environment and the config file give it:
/// read at start, and again on SIGHUP.
fn load_config(args: &Args) -> anyhow::Result<lhttp_server::Config> {
    // Variables that flags read (`LHTTPD_LISTEN`) are valid without being settings.
    let command = Args::command();
    let flag_variables: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env()?.to_str().map(str::to_owned))
        .collect();
    let flag_variables: Vec<&str> = flag_variables.iter().map(String::as_str).collect();
    let mut config = settings::load(
        args.config.as_deref(),
        settings::environment()?,
        &flag_variables,
    )?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(metrics) = args.metrics_listen {
        config.server.metrics_listen = Some(metrics);
    }
    config
        .upstream
        .allow
        .extend(args.upstream_allow.iter().cloned());
    if !args.nats.is_empty() {
        config.cluster.nats = args.nats.clone();
    }
    Ok(config)
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    // The same check as building the server makes, before binding, so that a configuration
    // error is reported as such rather than as whatever the listener meets first.
    config.validate()?;
    if let Some(Tool::Token {
        user,
        roles,
        subscribe,
        publish,
        only,
        valid_secs,
    }) = args.command
    {
        let spec = lhttp_server::TokenSpec {
            user,
            roles,
            subscribe,
            publish,
            only,
            valid_for: std::time::Duration::from_secs(valid_secs),
        };
        let token = lhttp_server::mint_token(&config.auth, &spec).map_err(anyhow::Error::msg)?;
        return print_stdout(&format!("{token}\n"));
    }
    if args.check_config {
        return print_stdout(&settings::effective_toml(&config)?);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(config, args))
}

async fn serve(config: lhttp_server::Config, args: Args) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives while starting up still shuts down cleanly.
    let shutdown = shutdown_signal()?;
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let nats = config.cluster.nats.clone();
    let metrics_listen = config.server.metrics_listen;
    // The demo default on a reachable address is the classic accident: say so at every start.
    if !local.ip().is_loopback() && config.auth.anonymous && config.auth.rules.is_empty() {
        tracing::warn!(
            "listening on {local} with [auth] anonymous = true and no [[auth.rules]]: anyone who \
             can reach this port may subscribe and publish to every channel (see docs/security.md)"
        );
    }
    let (ws, http) = match config.server.tls {
        Some(_) => ("wss", "https"),
        None => ("ws", "http"),
    };
    let transports = config.transports.clone();
    let admin = config.admin.enabled.then(|| config.admin.path.clone());
    let mut builder = pages::FILES.iter().fold(
        Server::builder(config),
        |builder, &(path, content_type, body)| builder.static_file(path, content_type, body),
    );
    if let Some(path) = &admin {
        for &(name, content_type, body) in pages::ADMIN {
            builder = builder.static_file(format!("{path}{name}"), content_type, body);
        }
    }
    let server = builder.build()?;
    if !nats.is_empty() {
        tracing::info!(servers = ?nats, "cluster mode: sharing channels through NATS");
    }
    tracing::info!(
        "lhttpd {} listening on {local}: WebSocket {ws}://{local}/, chat page {http}://{local}/",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(tcp) = &transports.tcp {
        tracing::info!("byte streams on tcp://{}", tcp.listen);
    }
    if let Some(tls) = &transports.tls {
        tracing::info!("byte streams over TLS on tls://{}", tls.listen);
    }
    if let Some(unix) = &transports.unix {
        tracing::info!("byte streams on unix://{}", unix.path.display());
    }
    reload_on_hangup(server.handle(), args)?;
    if let Some(path) = &admin {
        tracing::info!("admin page on {http}://{local}{path}");
    }
    if let Some(metrics) = metrics_listen {
        tracing::info!("metrics and health on http://{metrics}/metrics and /healthz only");
    }
    server.run(listener, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// On SIGHUP (instead of dying, SIGHUP's default), reads the configuration again as at start
/// and puts in force what can change while serving; then reads the TLS certificates again.
/// A configuration that would not start is refused with the reason, and nothing changes.
#[cfg(unix)]
fn reload_on_hangup(handle: lhttp_server::ServerHandle, args: Args) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration and the TLS certificates");
            // The server logs what it put in force and what needs a restart.
            match load_config(&args).map(|config| handle.reload(config)) {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::error!("reload refused, nothing changed: {error}");
                }
                Err(error) => {
                    tracing::error!("reload refused, nothing changed: {error:#}");
                }
            }
            // A failure is logged by the server, and the old certificate stays in use.
            let _ = handle.reload_tls();
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_hangup(_handle: lhttp_server::ServerHandle, _args: Args) -> anyhow::Result<()> {
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers; the returned future completes on either.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutting down: closing connections");
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: closing connections");
    })
}
