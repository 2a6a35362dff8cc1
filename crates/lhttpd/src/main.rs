//! `lhttpd`: the lhttp server. Reads the configuration (embedded default, file, environment,
//! flags), sets up logging, and runs [`lhttp_server::Server`] until SIGINT or SIGTERM.

mod settings;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use lhttp_server::Server;
use tracing_subscriber::EnvFilter;

/// The lhttp real-time messaging server.
#[derive(Debug, Parser)]
#[command(name = "lhttpd", version, about)]
struct Args {
    /// Address to listen on (overrides [server] listen).
    #[arg(long, env = "LHTTPD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// TOML configuration file.
    #[arg(long, env = "LHTTPD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = settings::load(args.config.as_deref(), std::env::vars())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    config.limits.validate().map_err(anyhow::Error::msg)?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: lhttp_server::Config) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let server = Server::builder(config).build()?;
    tracing::info!(
        "lhttpd {} listening on {local}: WebSocket ws://{local}/, chat page http://{local}/",
        env!("CARGO_PKG_VERSION")
    );
    server.run(listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = terminate.recv() => {},
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: closing connections");
}
