//! Prints every message published to the channels named on the command line.
//!
//! ```text
//! cargo run -p lhttp-client --example subscriber -- news weather
//! LHTTP_URL=ws://127.0.0.1:8081/ cargo run -p lhttp-client --example subscriber -- news
//! ```

use futures_util::StreamExt;
use lhttp_client::Client;

#[tokio::main]
async fn main() -> Result<(), lhttp_client::Error> {
    let url = std::env::var("LHTTP_URL").unwrap_or_else(|_| "ws://127.0.0.1:8081/".into());
    let mut channels: Vec<String> = std::env::args().skip(1).collect();
    if channels.is_empty() {
        channels.push("news".into());
    }
    let client = Client::connect(&url).await?;
    let mut messages = client.subscribe(channels).await?;
    while let Some(message) = messages.next().await {
        println!(
            "[{}] {}: {}",
            message.header("publish").unwrap_or("?"),
            message.command(),
            String::from_utf8_lossy(message.body())
        );
    }
    Ok(())
}
