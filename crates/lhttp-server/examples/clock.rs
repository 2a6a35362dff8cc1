//! Embeds the server and adds one command: `LHTTP/1.0 time` is answered with the time.
//! Everything else (subscribe, publish, the chat page) works as in `lhttpd`.
//!
//! ```sh
//! cargo run -p lhttp-server --example clock -- --listen 127.0.0.1:8081
//! ```

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use lhttp_server::{Config, Context, Processor, Rejection, Server, async_trait};

/// Answers with the seconds since the Unix epoch.
struct Clock;

#[async_trait]
impl Processor for Clock {
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Rejection::unavailable("clock before 1970"))?
            .as_secs();
        let reply = ctx
            .reply_builder()
            .header("unit", "s")
            .body(seconds.to_string())
            .build()
            .map_err(|e| Rejection::new(500, e.to_string()))?;
        let _ = ctx.reply(&reply);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder(Config::default())
        .processor("time", Clock)
        .build()?;
    let listener = tokio::net::TcpListener::bind(support::listen_address()).await?;
    println!(
        "listening on ws://{}/: it answers `LHTTP/1.0 time`",
        listener.local_addr()?
    );
    server.run(listener, support::stop_signal()).await?;
    Ok(())
}
