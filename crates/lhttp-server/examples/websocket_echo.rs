//! A WebSocket echo server on the server's own codec, for conformance test suites: every text
//! or binary message comes back with the same type. `scripts/autobahn` runs the Autobahn
//! TestSuite against it.
//!
//! ```sh
//! cargo run --release -p lhttp-server --example websocket_echo -- 127.0.0.1:9001
//! ```
//!
//! With port 0 it picks a free port; the first line it prints is `listening on ADDRESS`.

use std::io::Write;

/// The largest message of Autobahn's section 9 is 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;
    lhttp_server::conformance::serve_echo(listener, MAX_MESSAGE).await?;
    Ok(())
}
