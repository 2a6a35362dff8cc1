//! What the embedding examples share: where they listen (`--listen ADDR`, 127.0.0.1:8081 by
//! default; port 0 picks a free one) and what stops them (SIGINT from a terminal, SIGTERM from
//! a service manager), as `lhttpd` does.

use std::net::SocketAddr;

/// The address given with `--listen ADDR`, or 127.0.0.1:8081; exits with status 2 and a usage
/// line for anything else.
pub fn listen_address() -> SocketAddr {
    let mut args = std::env::args().skip(1);
    let address = match (args.next().as_deref(), args.next(), args.next()) {
        (None, _, _) => return SocketAddr::from(([127, 0, 0, 1], 8081)),
        (Some("--listen"), Some(address), None) => address.parse().ok(),
        _ => None,
    };
    address.unwrap_or_else(|| {
        let name = std::env::args().next().unwrap_or_default();
        eprintln!("usage: {name} [--listen ADDR]");
        std::process::exit(2)
    })
}

/// Completes at SIGINT or SIGTERM: the server then shuts down gracefully.
pub async fn stop_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
