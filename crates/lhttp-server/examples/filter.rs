//! A header filter: every message that publishes must name its sender (`nick`, 1 to 32
//! characters) or it is refused with 400 before anything is published, and every published
//! copy carries the time the server received it (`received-at`, milliseconds since the Unix
//! epoch), which no client can forge. Filters run for every command, around its processor;
//! the built-in publish runs after them, so what they change is what subscribers get.
//!
//! ```sh
//! cargo run -p lhttp-server --example filter -- --listen 127.0.0.1:8081
//! ```

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use lhttp_server::{Config, Context, Filter, Rejection, Server, proto::names};

/// Checks the sender's name and stamps the time on what is published.
struct Stamp;

impl Filter for Stamp {
    fn before(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        if !ctx.message().headers().contains(names::PUBLISH) {
            return Ok(());
        }
        let nick_ok = ctx
            .message()
            .header("nick")
            .is_some_and(|nick| (1..=32).contains(&nick.chars().count()));
        if !nick_ok {
            return Err(Rejection::bad_request(
                "a message that publishes needs a nick header of 1 to 32 characters",
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // `set` replaces whatever `received-at` the client sent.
        ctx.message_mut()
            .headers_mut()
            .set("received-at", now.to_string())
            .map_err(|e| Rejection::new(500, e.to_string()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder(Config::default()).filter(Stamp).build()?;
    let listener = tokio::net::TcpListener::bind(support::listen_address()).await?;
    println!(
        "listening on ws://{}/: publishes need a nick and get a received-at",
        listener.local_addr()?
    );
    server.run(listener, support::stop_signal()).await?;
    Ok(())
}
