//! A chat client: each line typed is published to a room, and the room is printed.
//!
//! ```text
//! cargo run -p lhttp-client --example chat -- chatroom ann
//! ```
//!
//! Run it in two terminals with different names and type.

use futures_util::StreamExt;
use lhttp_client::{Client, ConnectionState};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), lhttp_client::Error> {
    let url = std::env::var("LHTTP_URL").unwrap_or_else(|_| "ws://127.0.0.1:8081/".into());
    let mut args = std::env::args().skip(1);
    let room = args.next().unwrap_or_else(|| "chatroom".into());
    let name = args.next().unwrap_or_else(|| "anonymous".into());

    let client = Client::connect(&url).await?;
    let mut messages = client.subscribe([room.as_str()]).await?;
    let mut states = client.state_changes();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    eprintln!("joined {room} as {name}; type a line and press enter");

    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) if !line.trim().is_empty() => {
                    let sent = client
                        .publish_with(&room, "chat", [("from", name.clone())], line)
                        .await;
                    if let Err(e) = sent {
                        eprintln!("not sent: {e}");
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            },
            message = messages.next() => match message {
                Some(message) => println!(
                    "{}: {}",
                    message.header("from").unwrap_or("?"),
                    String::from_utf8_lossy(message.body())
                ),
                None => break,
            },
            Ok(()) = states.changed() => match *states.borrow_and_update() {
                ConnectionState::Disconnected => eprintln!("connection lost, reconnecting..."),
                ConnectionState::Connected => eprintln!("connected again"),
                ConnectionState::Closed => break,
            },
        }
    }
    client.close().await;
    Ok(())
}
