//! [`Link`]: one open connection to a server, whatever carries it. The connection task reads,
//! writes, pings and closes through it and never learns which transport is underneath:
//!
//! - a WebSocket (tungstenite), for `ws://` and `wss://`: one message per WebSocket message,
//!   pings and pongs, close frames with a code and reason;
//! - a byte stream framed by [`lhttp_proto::stream`], for `tcp://`, `tls://`, `unix://` and
//!   caller-provided streams: one message per frame, heartbeats (empty frames) for pings, and
//!   the server's `close` message for a close frame.

use std::{pin::Pin, time::Duration};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use lhttp_proto::{
    Message,
    stream::{self, Decoded},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::{WebSocketStream, tungstenite};

/// A byte stream of any kind: TCP, TLS over TCP, a Unix socket, an in-process pipe.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One virtual call per read or write system call: nothing next to the system call itself,
/// and one connection task serves every transport without being compiled once per stream type.
pub(crate) type BoxedIo = Pin<Box<dyn Io>>;

/// Bytes read from a stream at a time, at least: a burst of small messages in one call.
const READ_CHUNK: usize = 16 * 1024;

/// How often, at most, the client answers the server's heartbeats with its own. Answering
/// keeps a client that only listens (and so never pings: it is never silent) alive within the
/// server's idle timeout (lhttpd sends a heartbeat every `server.ping_interval_ms`, 30 s by
/// default, and does not answer them); the bound keeps a peer that did answer from echoing
/// heartbeats back and forth more than ten times a second.
const HEARTBEAT_ANSWER_EVERY: Duration = Duration::from_millis(100);

/// An open connection.
pub(crate) enum Link {
    WebSocket(Box<WebSocketStream<BoxedIo>>),
    Stream(Box<Framed>),
}

/// A byte stream with the lhttp stream framing.
pub(crate) struct Framed {
    io: BoxedIo,
    /// Bytes read and not yet decoded: at most one frame plus one read.
    read: BytesMut,
    /// The frame being written; kept to reuse its allocation.
    write: Vec<u8>,
    max_message_size: usize,
    /// When the last frame was written, for [`HEARTBEAT_ANSWER_EVERY`].
    last_write: tokio::time::Instant,
}

/// What arrived on a link.
#[derive(Debug)]
pub(crate) enum Received {
    /// One message's bytes, not parsed yet.
    Message(Bytes),
    /// A sign of life carrying no message: a pong, a ping, a heartbeat.
    Alive,
    /// The server closed the connection, with the WebSocket close code and reason (from a
    /// close frame, or from a stream's `close` message).
    Closed { code: Option<u16>, reason: String },
    /// The connection failed, or ended without a close.
    Ended(Option<String>),
}

/// Why a write failed.
#[derive(Debug)]
pub(crate) struct WriteError(pub(crate) String);

impl Link {
    pub(crate) fn websocket(ws: WebSocketStream<BoxedIo>) -> Link {
        Link::WebSocket(Box::new(ws))
    }

    pub(crate) fn stream(io: BoxedIo, max_message_size: usize) -> Link {
        Link::Stream(Box::new(Framed {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            max_message_size,
            last_write: tokio::time::Instant::now(),
        }))
    }

    /// The next thing that arrives. Cancel-safe: a `select!` may drop the future and call
    /// again without losing bytes.
    pub(crate) async fn next(&mut self) -> Received {
        match self {
            Link::WebSocket(ws) => match ws.next().await {
                Some(Ok(tungstenite::Message::Text(text))) => Received::Message(Bytes::from(text)),
                Some(Ok(tungstenite::Message::Binary(bytes))) => Received::Message(bytes),
                Some(Ok(tungstenite::Message::Close(frame))) => match frame {
                    Some(frame) => Received::Closed {
                        code: Some(u16::from(frame.code)),
                        reason: frame.reason.to_string(),
                    },
                    None => Received::Closed {
                        code: None,
                        reason: String::new(),
                    },
                },
                Some(Ok(_)) => Received::Alive,
                Some(Err(e)) => Received::Ended(Some(e.to_string())),
                None => Received::Ended(None),
            },
            Link::Stream(framed) => framed.next().await,
        }
    }

    /// Writes `message` and flushes it.
    pub(crate) async fn send(&mut self, message: &Message) -> Result<(), WriteError> {
        match self {
            Link::WebSocket(ws) => ws
                .send(websocket_frame(message))
                .await
                .map_err(|e| WriteError(e.to_string())),
            Link::Stream(framed) => {
                let bytes = message.to_bytes();
                framed.write_frame(&bytes).await
            }
        }
    }

    /// A sign of life without a message: a WebSocket ping, or on a stream a heartbeat (how the
    /// client answers the server's heartbeats).
    pub(crate) async fn ping(&mut self) -> Result<(), WriteError> {
        match self {
            Link::WebSocket(ws) => ws
                .send(tungstenite::Message::Ping(Bytes::new()))
                .await
                .map_err(|e| WriteError(e.to_string())),
            Link::Stream(framed) => framed.write_frame(&[]).await,
        }
    }

    /// Whether a heartbeat just received should be answered: on a stream, when nothing was
    /// written for [`HEARTBEAT_ANSWER_EVERY`]. (tungstenite answers WebSocket pings itself.)
    pub(crate) fn should_answer_heartbeat(&self) -> bool {
        match self {
            Link::WebSocket(_) => false,
            Link::Stream(framed) => framed.last_write.elapsed() >= HEARTBEAT_ANSWER_EVERY,
        }
    }

    /// Ends the connection politely: a WebSocket close handshake, or, on a stream (where the
    /// client has no close message to send), the end of the client's half, then waits for the
    /// server to close too. At most a second.
    pub(crate) async fn close(&mut self) {
        let handshake = async {
            match self {
                Link::WebSocket(ws) => {
                    let _ = WebSocketStream::close(&mut **ws, None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                }
                Link::Stream(framed) => {
                    let _ = framed.io.shutdown().await;
                    let mut sink = [0u8; 4096];
                    while let Ok(1..) = framed.io.read(&mut sink).await {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), handshake).await;
    }
}

impl Framed {
    async fn next(&mut self) -> Received {
        loop {
            match stream::decode(&self.read, self.max_message_size) {
                Err(e) => return Received::Ended(Some(e.to_string())),
                Ok((Decoded::Heartbeat, used)) => {
                    let _ = self.read.split_to(used);
                    return Received::Alive;
                }
                Ok((Decoded::Message(message), used)) => {
                    let start = message.as_ptr() as usize - self.read.as_ptr() as usize;
                    let end = start + message.len();
                    let frame = self.read.split_to(used).freeze().slice(start..end);
                    return match close_message(&frame) {
                        Some((code, reason)) => Received::Closed { code, reason },
                        None => Received::Message(frame),
                    };
                }
                Ok((Decoded::Incomplete { frame_len }, skipped)) => {
                    let _ = self.read.split_to(skipped);
                    let want = frame_len.map_or(0, |len| len - skipped);
                    self.read
                        .reserve(want.saturating_sub(self.read.len()).max(READ_CHUNK));
                    // Cancel-safe: `read_buf` either reads into the buffer or was not polled
                    // to completion and read nothing.
                    match self.io.read_buf(&mut self.read).await {
                        Ok(0) if self.read.iter().all(|&b| b == b'\r' || b == b'\n') => {
                            return Received::Ended(None);
                        }
                        Ok(0) => {
                            return Received::Ended(Some(
                                "the stream ended in the middle of a frame".into(),
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => return Received::Ended(Some(e.to_string())),
                    }
                }
            }
        }
    }

    async fn write_frame(&mut self, message: &[u8]) -> Result<(), WriteError> {
        self.write.clear();
        stream::encode(message, &mut self.write);
        let written = async {
            self.io.write_all(&self.write).await?;
            self.io.flush().await
        };
        written.await.map_err(|e| WriteError(e.to_string()))?;
        self.last_write = tokio::time::Instant::now();
        Ok(())
    }
}

/// The code and reason of the server's last message on a stream: command `close`, with `code`
/// and `reason` headers. A message published with command `close` carries a `publish` header,
/// and an answer a `request-id`: those are ordinary messages.
fn close_message(bytes: &Bytes) -> Option<(Option<u16>, String)> {
    let start = [lhttp_proto::PREFIX, stream::CLOSE_COMMAND.as_bytes()].concat();
    let rest = bytes.strip_prefix(&start[..])?;
    if !matches!(rest.first(), None | Some(b'\r' | b'\n')) {
        return None;
    }
    let message = Message::parse(bytes.clone()).ok()?;
    if message.header("publish").is_some() || message.header("request-id").is_some() {
        return None;
    }
    let code = message.header("code").and_then(|c| c.parse().ok());
    Some((
        code,
        message.header("reason").unwrap_or_default().to_owned(),
    ))
}

/// The WebSocket frame for `message`: text when it is all UTF-8 (what servers and browsers
/// expect), binary otherwise.
fn websocket_frame(message: &Message) -> tungstenite::Message {
    let bytes = message.to_bytes();
    match tungstenite::Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => tungstenite::Message::Text(text),
        Err(_) => tungstenite::Message::Binary(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(max: usize) -> (Link, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64);
        (Link::stream(Box::pin(ours), max), theirs)
    }

    #[tokio::test]
    async fn frames_are_read_across_small_reads_and_heartbeats_are_signs_of_life() {
        let (mut link, mut server) = pair(1024);
        let message = b"LHTTP/1.0 chat\r\npublish:room\r\n\r\nhello";
        let mut wire = Vec::new();
        stream::encode(b"", &mut wire);
        stream::encode(message, &mut wire);
        stream::encode(message, &mut wire);
        tokio::spawn(async move {
            for piece in wire.chunks(7) {
                server.write_all(piece).await.unwrap();
            }
        });
        assert!(matches!(link.next().await, Received::Alive));
        for _ in 0..2 {
            match link.next().await {
                Received::Message(bytes) => assert_eq!(&bytes[..], message),
                other => panic!("expected a message, got {other:?}"),
            }
        }
        assert!(matches!(link.next().await, Received::Ended(None)));
    }

    #[tokio::test]
    async fn the_close_message_ends_the_link_with_its_code_and_a_published_close_does_not() {
        let (mut link, mut server) = pair(1024);
        let mut wire = Vec::new();
        stream::encode(b"LHTTP/1.0 close\r\npublish:room\r\n\r\n", &mut wire);
        stream::encode(
            b"LHTTP/1.0 close\r\ncode:1001\r\nreason:server shutting down\r\n\r\n",
            &mut wire,
        );
        tokio::spawn(async move { server.write_all(&wire).await.unwrap() });
        assert!(matches!(link.next().await, Received::Message(_)));
        match link.next().await {
            Received::Closed { code, reason } => {
                assert_eq!(code, Some(1001));
                assert_eq!(reason, "server shutting down");
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_size_limit_ends_the_link_before_its_bytes_arrive() {
        let (mut link, mut server) = pair(100);
        server.write_all(b"101\r\n").await.unwrap();
        assert!(matches!(link.next().await, Received::Ended(Some(_))));
    }

    #[tokio::test]
    async fn messages_and_pings_are_written_as_frames() {
        let (mut link, mut server) = pair(1024);
        let message = Message::builder("chat").body("hi").build().unwrap();
        link.send(&message).await.unwrap();
        link.ping().await.unwrap();
        drop(link);
        let mut wire = Vec::new();
        server.read_to_end(&mut wire).await.unwrap();
        let mut expected = Vec::new();
        stream::encode(&message.to_bytes(), &mut expected);
        expected.extend_from_slice(stream::HEARTBEAT);
        assert_eq!(wire, expected);
    }
}
