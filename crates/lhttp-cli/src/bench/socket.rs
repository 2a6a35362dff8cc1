//! [`Socket`]: one load-client connection, a WebSocket (`ws://`, `wss://`) or a byte stream with
//! the lhttp stream framing (`tcp://host:port`, `tls://host:port`, `unix:///path`), behind one
//! `Stream` + `Sink` of tungstenite frames, so that every scenario drives either without
//! knowing which. TLS sits underneath, in the boxed stream: the frames are the same.
//!
//! On a stream, each message arrives as a binary frame, a server heartbeat as a ping (answered
//! with a heartbeat, as tungstenite answers WebSocket pings, so that a subscriber that never
//! writes outlives the server's idle timeout); text and binary frames are written as one
//! frame each. Writes are buffered until `flush`, as on the WebSocket.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use lhttp_client::proto::stream::{self, Decoded};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Error, Message as Frame},
};
use tokio_util::codec::{Decoder, Encoder, Framed};

/// A stream of any kind (TCP, TLS, Unix socket) under a WebSocket or the framing.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The read buffer of a stream connection, as the WebSocket's (`client_config`): a burst in
/// one read, without zeroing much per read.
const READ_CAPACITY: usize = 32 * 1024;

/// Largest message accepted from the server: tungstenite's default, which the WebSocket
/// connections use.
const MAX_MESSAGE: usize = 64 << 20;

/// A load-client connection.
pub(crate) enum Socket {
    WebSocket(Box<WebSocketStream<Pin<Box<dyn Io>>>>),
    Stream(Box<Framed<Pin<Box<dyn Io>>, StreamCodec>>),
}

impl Socket {
    pub(crate) fn websocket(ws: WebSocketStream<Pin<Box<dyn Io>>>) -> Socket {
        Socket::WebSocket(Box::new(ws))
    }

    pub(crate) fn stream(io: Pin<Box<dyn Io>>) -> Socket {
        Socket::Stream(Box::new(Framed::with_capacity(
            io,
            StreamCodec::default(),
            READ_CAPACITY,
        )))
    }
}

impl Stream for Socket {
    type Item = Result<Frame, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Socket::WebSocket(ws) => Pin::new(ws).poll_next(cx),
            Socket::Stream(framed) => {
                // Heartbeat answers go out while reading, as tungstenite's pongs do.
                if !framed.write_buffer().is_empty() {
                    let _ = Pin::new(&mut **framed).poll_flush(cx);
                }
                let next = Pin::new(&mut **framed).poll_next(cx);
                if let Poll::Ready(Some(Ok(Frame::Ping(_)))) = &next {
                    framed
                        .write_buffer_mut()
                        .extend_from_slice(stream::HEARTBEAT);
                    let _ = Pin::new(&mut **framed).poll_flush(cx);
                }
                next.map(|item| item.map(|r| r.map_err(Error::Io)))
            }
        }
    }
}

impl Sink<Frame> for Socket {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.get_mut() {
            Socket::WebSocket(ws) => Pin::new(ws).poll_ready(cx),
            Socket::Stream(framed) => Pin::new(&mut **framed).poll_ready(cx).map_err(Error::Io),
        }
    }

    fn start_send(self: Pin<&mut Self>, frame: Frame) -> Result<(), Error> {
        match self.get_mut() {
            Socket::WebSocket(ws) => Pin::new(ws).start_send(frame),
            Socket::Stream(framed) => Pin::new(&mut **framed).start_send(frame).map_err(Error::Io),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.get_mut() {
            Socket::WebSocket(ws) => Pin::new(ws).poll_flush(cx),
            Socket::Stream(framed) => Pin::new(&mut **framed).poll_flush(cx).map_err(Error::Io),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.get_mut() {
            Socket::WebSocket(ws) => Pin::new(ws).poll_close(cx),
            Socket::Stream(framed) => Pin::new(&mut **framed).poll_close(cx).map_err(Error::Io),
        }
    }
}

/// `lhttp_proto::stream` framing as a tokio-util codec.
#[derive(Debug, Default)]
pub(crate) struct StreamCodec {
    /// One frame being encoded; the protocol crate encodes into a `Vec`.
    scratch: Vec<u8>,
}

impl Decoder for StreamCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        match stream::decode(src, MAX_MESSAGE) {
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            Ok((Decoded::Heartbeat, used)) => {
                src.advance(used);
                Ok(Some(Frame::Ping(Default::default())))
            }
            Ok((Decoded::Message(message), used)) => {
                let start = message.as_ptr() as usize - src.as_ptr() as usize;
                let end = start + message.len();
                Ok(Some(Frame::Binary(
                    src.split_to(used).freeze().slice(start..end),
                )))
            }
            Ok((Decoded::Incomplete { frame_len }, skipped)) => {
                src.advance(skipped);
                if let Some(len) = frame_len {
                    src.reserve((len - skipped).saturating_sub(src.len()));
                }
                Ok(None)
            }
        }
    }
}

impl Encoder<Frame> for StreamCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> io::Result<()> {
        self.scratch.clear();
        match frame {
            Frame::Text(text) => stream::encode(text.as_bytes(), &mut self.scratch),
            Frame::Binary(bytes) => stream::encode(&bytes, &mut self.scratch),
            Frame::Ping(_) | Frame::Pong(_) => stream::encode(b"", &mut self.scratch),
            // The client ends a stream by closing it; there is no close message to send.
            Frame::Close(_) | Frame::Frame(_) => {}
        }
        dst.extend_from_slice(&self.scratch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn stream_frames_go_out_as_written_and_heartbeats_are_answered() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut socket = Socket::stream(Box::pin(ours));
        socket.feed(Frame::text("LHTTP/1.0 a")).await.unwrap();
        socket
            .feed(Frame::binary(b"LHTTP/1.0 b".to_vec()))
            .await
            .unwrap();
        socket.flush().await.unwrap();
        let mut wire = [0u8; 34];
        theirs.read_exact(&mut wire).await.unwrap();
        assert_eq!(&wire, b"11\r\nLHTTP/1.0 a\r\n11\r\nLHTTP/1.0 b\r\n");

        theirs
            .write_all(b"0\r\n\r\n11\r\nLHTTP/1.0 c\r\n")
            .await
            .unwrap();
        assert!(matches!(socket.next().await, Some(Ok(Frame::Ping(_)))));
        match socket.next().await {
            Some(Ok(Frame::Binary(data))) => assert_eq!(&data[..], b"LHTTP/1.0 c"),
            other => panic!("expected a message, got {other:?}"),
        }
        let mut answer = [0u8; 5];
        theirs.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, stream::HEARTBEAT);
    }
}
