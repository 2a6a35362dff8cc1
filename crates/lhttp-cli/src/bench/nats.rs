//! The NATS client protocol over WebSocket, so that `lhttp bench throughput --nats` drives a
//! nats-server's WebSocket port (`websocket { port: N, no_tls: true }`) with the same
//! publishers, subscribers, bodies and checks as lhttpd: a publish is `PUB <subject> <len>`
//! and its payload, a delivery `MSG <subject> <sid> <len>` and its payload. The server may put
//! several protocol messages in one WebSocket frame, or split one over two; [`Messages`] reads
//! them from the bytes however they come.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message as Frame;

use super::Socket;

/// What ends a publish after its payload.
pub(crate) const TAIL: &[u8] = b"\r\n";

/// The line that starts a publish of `len` payload bytes to `subject`.
pub(crate) fn publish_head(subject: &str, len: usize) -> String {
    format!("PUB {subject} {len}\r\n")
}

/// A whole publish of `payload` to `subject` (probes and end markers).
pub(crate) fn publish(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut frame = publish_head(subject, payload.len()).into_bytes();
    frame.extend_from_slice(payload);
    frame.extend_from_slice(TAIL);
    frame
}

/// Greets the server (its `INFO`, our `CONNECT`), subscribes to `subject` when given, and waits
/// for the answer to a `PING`: the server has then taken the subscription.
pub(crate) async fn handshake(
    socket: &mut Socket,
    subject: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let mut hello = String::from(
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1,\"name\":\"lhttp bench\"}\r\n",
    );
    if let Some(subject) = subject {
        hello.push_str(&format!("SUB {subject} 1\r\n"));
    }
    hello.push_str("PING\r\n");
    socket
        .send(Frame::binary(hello.into_bytes()))
        .await
        .context("sending CONNECT to the NATS server")?;
    let mut messages = Messages::default();
    let answered = async {
        while let Some(frame) = socket.next().await {
            messages.feed(&frame.context("reading from the NATS server")?.into_data());
            while let Some(item) = messages.next_item() {
                match item {
                    Item::Pong => return Ok(()),
                    Item::Error(line) => bail!("the NATS server refused: {line}"),
                    _ => {}
                }
            }
        }
        bail!("the NATS server closed the connection during the handshake")
    };
    tokio::time::timeout(timeout, answered)
        .await
        .context("no PONG from the NATS server in time")?
}

/// One protocol message from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// The payload of a `MSG`.
    Payload(Bytes),
    Ping,
    Pong,
    /// `-ERR` and its text.
    Error(String),
    /// `INFO`, `+OK`, or anything else this client does not act on.
    Other,
}

/// The protocol messages in the bytes received so far.
#[derive(Debug, Default)]
pub(crate) struct Messages {
    buffer: BytesMut,
}

impl Messages {
    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole message, or `None` until more bytes come.
    pub(crate) fn next_item(&mut self) -> Option<Item> {
        let line_end = self.buffer.windows(2).position(|w| w == b"\r\n")?;
        let line = &self.buffer[..line_end];
        if let Some(args) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <len>
            let len = std::str::from_utf8(args)
                .ok()
                .and_then(|args| args.rsplit(' ').next())
                .and_then(|len| len.parse::<usize>().ok());
            let Some(len) = len else {
                let error = format!("unreadable: {}", String::from_utf8_lossy(line));
                self.buffer.advance(line_end + 2);
                return Some(Item::Error(error));
            };
            let start = line_end + 2;
            if self.buffer.len() < start + len + 2 {
                return None;
            }
            self.buffer.advance(start);
            let payload = self.buffer.split_to(len).freeze();
            self.buffer.advance(2);
            return Some(Item::Payload(payload));
        }
        let item = match line {
            b"PING" => Item::Ping,
            b"PONG" => Item::Pong,
            _ if line.starts_with(b"-ERR") => {
                Item::Error(String::from_utf8_lossy(line).into_owned())
            }
            _ => Item::Other,
        };
        self.buffer.advance(line_end + 2);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_however_the_frames_cut_them() {
        let wire = b"INFO {\"server_id\":\"x\"}\r\nMSG bench 1 5\r\nhello\r\nPING\r\nMSG bench 1 r.1 3\r\nabc\r\n-ERR 'Stale'\r\n";
        for cut in 1..wire.len() {
            let mut messages = Messages::default();
            let mut items = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                messages.feed(part);
                while let Some(item) = messages.next_item() {
                    items.push(item);
                }
            }
            assert_eq!(
                items,
                [
                    Item::Other,
                    Item::Payload(Bytes::from_static(b"hello")),
                    Item::Ping,
                    Item::Payload(Bytes::from_static(b"abc")),
                    Item::Error("-ERR 'Stale'".into()),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_publish_is_its_line_its_payload_and_crlf() {
        assert_eq!(publish("bench", b"probe"), b"PUB bench 5\r\nprobe\r\n");
    }
}
