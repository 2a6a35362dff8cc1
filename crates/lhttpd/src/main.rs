//! `lhttpd`: the lhttp server. Reads the configuration (embedded default, file, environment,
//! flags), sets up logging, and runs [`lhttp_server::Server`] until SIGINT or SIGTERM.

mod settings;

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use lhttp_server::Server;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's allocator: a message's buffers are allocated by the thread that
/// reads it and freed by the one that writes it to a subscriber, which overflows glibc's
/// per-thread caches into its locked arenas. 13% fewer instructions per message one to one,
/// for 0.4 KiB more per idle connection (docs/performance.md, "Fifth session").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The lhttp real-time messaging server.
#[derive(Debug, Parser)]
#[command(name = "lhttpd", version, about)]
struct Args {
    /// Address to listen on (overrides [server] listen).
    #[arg(long, env = "LHTTPD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Serve GET /metrics and GET /healthz on this address instead of the main port (overrides
    /// [server] metrics_listen).
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// TOML configuration file.
    #[arg(long, env = "LHTTPD_CONFIG", value_name = "FILE")]
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

    /// Check the configuration, print the effective values, and exit.
    #[arg(long)]
    check_config: bool,

    /// More logging: -v for debug, -vv for trace. RUST_LOG, when set, takes precedence.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_config {
        print!("{}", settings::DEFAULT_CONFIG);
        return ExitCode::SUCCESS;
    }
    init_logging(args.verbose);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lhttpd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour only on a terminal: log files and journald get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = settings::load(args.config.as_deref(), std::env::vars())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(metrics) = args.metrics_listen {
        config.server.metrics_listen = Some(metrics);
    }
    config.upstream.allow.extend(args.upstream_allow);
    if !args.nats.is_empty() {
        config.cluster.nats = args.nats;
    }
    config.limits.validate().map_err(anyhow::Error::msg)?;
    config.server.validate().map_err(anyhow::Error::msg)?;
    config.upstream.validate().map_err(anyhow::Error::msg)?;
    config.cluster.validate().map_err(anyhow::Error::msg)?;
    config.auth.validate().map_err(anyhow::Error::msg)?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: lhttp_server::Config) -> anyhow::Result<()> {
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
    let server = Server::builder(config).build()?;
    if !nats.is_empty() {
        tracing::info!(servers = ?nats, "cluster mode: sharing channels through NATS");
    }
    tracing::info!(
        "lhttpd {} listening on {local}: WebSocket ws://{local}/, chat page http://{local}/",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(metrics) = metrics_listen {
        tracing::info!("metrics and health on http://{metrics}/metrics and /healthz only");
    }
    server.run(listener, shutdown).await?;
    tracing::info!("stopped");
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
