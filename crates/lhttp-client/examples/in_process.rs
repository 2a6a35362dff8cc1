//! A server embedded in the program and a client talking to it through an in-process pipe:
//! no socket, no port, the same `Client` API as over the network.
//!
//! ```text
//! cargo run -p lhttp-client --example in_process
//! ```

use futures_util::StreamExt;
use lhttp_client::Client;
use lhttp_server::{Config, Server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No listener: in-process connections need none (`server.run(listener, ..)` would serve
    // the network besides).
    let server = Server::builder(Config::default()).build()?;
    let handle = server.handle();
    // Each call opens a fresh pipe into a session of its own; the client calls it again
    // whenever it reconnects.
    let connect = move || {
        let stream = handle.connect_in_process();
        async move { Ok(stream) }
    };
    let client = Client::builder_with_connector(connect).connect().await?;
    let mut room = client.subscribe(["room"]).await?;
    client
        .publish("room", "hello from the same process")
        .await?;
    if let Some(message) = room.next().await {
        println!("{}", String::from_utf8_lossy(message.body()));
    }
    client.close().await;
    Ok(())
}
