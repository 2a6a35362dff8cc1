//! Receives a file in parts and answers with what it got.
//!
//! A client sends one message whose body is cut into parts by the `multipart` header, each part
//! with its own headers (here `name` and `content-type`); `MultipartBuilder` computes the
//! offsets:
//!
//! ```text
//! LHTTP/1.0 upload
//! multipart:0 47
//!
//! name:notes.txt
//! content-type:text/plain
//!
//! first part...name:photo.jpg
//! ...
//! ```
//!
//! and gets back one line per part: `notes.txt text/plain 13 bytes`.
//!
//! ```sh
//! cargo run -p lhttp-server --example upload -- --listen 127.0.0.1:8081
//! ```

mod support;

use lhttp_server::{Config, Context, Processor, Rejection, Server, async_trait};

/// Lists the parts of each `upload` message.
struct Upload;

#[async_trait]
impl Processor for Upload {
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        // The server already refused malformed offsets with 400; `None` means no header.
        let parts = ctx
            .message()
            .parts()
            .map_err(|e| Rejection::bad_request(e.to_string()))?
            .ok_or_else(|| Rejection::bad_request("upload needs a multipart header"))?;
        let mut summary = String::new();
        for (index, part) in parts.iter().enumerate() {
            let name = part.headers.get("name").unwrap_or("unnamed");
            let kind = part
                .headers
                .get("content-type")
                .unwrap_or("application/octet-stream");
            summary.push_str(&format!(
                "{index}: {name} {kind} {} bytes\n",
                part.body.len()
            ));
        }
        let reply = ctx
            .reply_builder()
            .header("parts", parts.len().to_string())
            .body(summary)
            .build()
            .map_err(|e| Rejection::new(500, e.to_string()))?;
        let _ = ctx.reply(&reply);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder(Config::default())
        .processor("upload", Upload)
        .build()?;
    let listener = tokio::net::TcpListener::bind(support::listen_address()).await?;
    println!(
        "listening on ws://{}/: it answers `LHTTP/1.0 upload` with a multipart body",
        listener.local_addr()?
    );
    server.run(listener, support::stop_signal()).await?;
    Ok(())
}
