//! [`ByteStream`]: lhttp messages framed for a byte stream (`lhttp_proto::stream`: a length
//! line, the message, a line end), over TCP, TLS, a Unix socket or the in-process pipe.
//!
//! Buffers are kept as on WebSocket: while a connection holds no unread bytes, a read goes into
//! the thread's scratch buffer, the first message is copied out of it into an allocation of
//! its own size and only what is left over is kept in a buffer of the connection's own, given
//! back once the socket is empty. A frame longer than the scratch buffer is announced by its
//! length line before any of its bytes: the buffer for it is exactly its size, charged to the
//! server's [`UnfinishedBudget`] before it is allocated, and given back when it is complete.
//!
//! The server's keepalive is a heartbeat (an empty frame); its close is a last message
//! `LHTTP/1.0 close` with `code` and `reason` headers, after which it shuts its side of the
//! stream down.

use std::{
    io,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use lhttp_proto::{
    FramingError,
    stream::{self, Decoded},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::transport::{
    Broken, Outgoing, ReadError, Received, Transport, TransportKind, budget::UnfinishedBudget,
    deadline::Deadline, scratch, write::WriteBuffer,
};

/// How long the server keeps reading after its close, so that closing does not reset the
/// connection while the client still sends.
const LINGER: Duration = Duration::from_millis(500);

/// Most bytes read and discarded while lingering.
const LINGER_BYTES: u64 = 1 << 20;

/// The server's end of one byte-stream connection; see the module documentation.
#[derive(Debug)]
pub(crate) struct ByteStream<S> {
    io: S,
    kind: TransportKind,
    max_message: usize,
    /// Bytes read and not yet decoded; unallocated while the client is quiet.
    read: BytesMut,
    /// Encoded frames waiting to be written.
    write: WriteBuffer,
    /// Nothing more will be read: the stream ended or the client broke the framing.
    read_ended: bool,
    /// The close message was queued: no frame may follow it.
    close_sent: bool,
    /// Where a frame longer than the scratch buffer is charged; `None` counts nothing.
    budget: Option<Arc<UnfinishedBudget>>,
    charged: usize,
    /// Frames decoded so far (wrapping), for the deadline of an unfinished one.
    completed: u32,
    deadline: Deadline,
}

impl<S> ByteStream<S> {
    /// Takes over `io`, a connection of `kind`, for messages of at most `max_message` bytes.
    pub(crate) fn new(io: S, kind: TransportKind, max_message: usize) -> ByteStream<S> {
        ByteStream {
            io,
            kind,
            max_message,
            read: BytesMut::new(),
            write: WriteBuffer::default(),
            read_ended: false,
            close_sent: false,
            budget: None,
            charged: 0,
            completed: 0,
            deadline: Deadline::default(),
        }
    }

    /// Charges this connection's large unfinished frames to `budget`, and gives an unfinished
    /// frame its deadline.
    pub(crate) fn with_budget(mut self, budget: Arc<UnfinishedBudget>) -> ByteStream<S> {
        self.budget = Some(budget);
        self
    }

    /// Charges or gives back the difference between what is charged and `bytes`.
    fn charge(&mut self, bytes: usize) -> Result<(), ReadError> {
        if let Some(budget) = &self.budget {
            if bytes > self.charged {
                if !budget.try_charge(bytes - self.charged) {
                    return Err(ReadError::Busy);
                }
            } else {
                budget.release(self.charged - bytes);
            }
        }
        self.charged = bytes;
        Ok(())
    }

    fn end_reading(&mut self) {
        self.read_ended = true;
        self.read = BytesMut::new();
        self.deadline = Deadline::default();
        let _ = self.charge(0);
    }

    fn fail(&mut self, error: ReadError) -> Poll<Option<Result<Received, ReadError>>> {
        self.end_reading();
        Poll::Ready(Some(Err(error)))
    }
}

impl<S> Drop for ByteStream<S> {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.charged);
        }
    }
}

/// The close a framing error ends the connection with.
fn broken(error: FramingError) -> ReadError {
    let broken = match error {
        FramingError::TooLarge { .. } => Broken {
            code: 1009,
            reason: "message too big",
        },
        _ => Broken {
            code: 1002,
            reason: "malformed frame: a frame starts with its length in digits on a line",
        },
    };
    ReadError::Violation(broken)
}

/// What one decode of the bytes held found.
enum Step {
    Item(Received, usize),
    /// More bytes are needed; the frame takes this many from the front, once known.
    More {
        skipped: usize,
        frame_len: Option<usize>,
    },
}

fn decode_step(buf: &[u8], max_message: usize) -> Result<Step, ReadError> {
    let (decoded, used) = stream::decode(buf, max_message).map_err(broken)?;
    Ok(match decoded {
        // Copied into an allocation of its own size: a message kept for long (queued,
        // retained) must not hold the read buffer with it.
        Decoded::Message(message) => {
            Step::Item(Received::Binary(Bytes::copy_from_slice(message)), used)
        }
        Decoded::Heartbeat => Step::Item(Received::Control, used),
        Decoded::Incomplete { frame_len } => Step::More {
            skipped: used,
            frame_len,
        },
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> ByteStream<S> {
    /// The next message or heartbeat; `None` once nothing more will be read.
    fn next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Received, ReadError>>> {
        if self.read_ended {
            return self.poll_ended(cx);
        }
        loop {
            let frame_len = match decode_step(&self.read, self.max_message) {
                Err(error) => return self.fail(error),
                Ok(Step::Item(item, used)) => {
                    self.read.advance(used);
                    self.completed = self.completed.wrapping_add(1);
                    return Poll::Ready(Some(Ok(item)));
                }
                Ok(Step::More { skipped, frame_len }) => {
                    self.read.advance(skipped);
                    frame_len
                }
            };
            match self.poll_read(cx, frame_len) {
                Poll::Ready(Ok(Some(item))) => {
                    self.completed = self.completed.wrapping_add(1);
                    return Poll::Ready(Some(Ok(item)));
                }
                Poll::Ready(Ok(None)) => {}
                Poll::Ready(Err(error)) => return self.fail(error),
                Poll::Pending => {
                    let timeout = self.budget.as_ref().and_then(|b| b.timeout());
                    let unfinished = !self.read.is_empty();
                    return match self.deadline.poll(timeout, unfinished, self.completed, cx) {
                        Poll::Ready(()) => self.fail(ReadError::Overdue),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    /// Reads more bytes for a frame of `frame_len` bytes (when its length line is in). With
    /// nothing held, reads into the thread's scratch buffer and returns its first item, if
    /// whole, keeping only the rest.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        frame_len: Option<usize>,
    ) -> Poll<Result<Option<Received>, ReadError>> {
        let frame_len = frame_len.unwrap_or(0);
        if self.charged != 0 && frame_len <= scratch::SIZE {
            let _ = self.charge(0);
        }
        if self.read.capacity() == 0 {
            let max_message = self.max_message;
            let read = scratch::read(&mut self.io, cx, |bytes| {
                let (item, used) = match decode_step(bytes, max_message)? {
                    Step::Item(item, used) => (Some(item), used),
                    Step::More { skipped, .. } => (None, skipped),
                };
                Ok((item, used))
            });
            return match read {
                Poll::Ready(Ok((item, rest))) => {
                    if let Some(rest) = rest {
                        self.read = rest;
                    }
                    Poll::Ready(Ok(item))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            };
        }
        if frame_len > scratch::SIZE {
            // The whole frame, in one allocation of its size, charged before it is made.
            if self.read.capacity() < frame_len {
                if let Err(error) = self.charge(frame_len) {
                    return Poll::Ready(Err(error));
                }
                let mut grown = BytesMut::with_capacity(frame_len);
                grown.extend_from_slice(&self.read);
                self.read = grown;
            }
        } else {
            self.read.reserve(scratch::SIZE);
        }
        let read = scratch::read_more(&mut self.io, cx, &mut self.read);
        if read.is_pending() && self.read.capacity() == 0 {
            let _ = self.charge(0);
        }
        read.map_ok(|()| None)
    }

    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Received, ReadError>>> {
        let _ = ready!(self.flush(cx));
        Poll::Ready(None)
    }

    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write.poll_flush(&mut self.io, cx)
    }
}

/// The last message of a stream the server closes.
fn close_message(code: u16, reason: &str) -> Vec<u8> {
    let mut code_text = itoa::Buffer::new();
    let mut message = Vec::with_capacity(64 + reason.len());
    message.extend_from_slice(lhttp_proto::PREFIX);
    message.extend_from_slice(stream::CLOSE_COMMAND.as_bytes());
    message.extend_from_slice(b"\r\ncode:");
    message.extend_from_slice(code_text.format(code).as_bytes());
    message.extend_from_slice(b"\r\nreason:");
    message.extend_from_slice(reason.as_bytes());
    message.extend_from_slice(b"\r\n\r\n");
    message
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for ByteStream<S> {
    const MAX_FRAME_OVERHEAD: usize = stream::MAX_FRAME_OVERHEAD;

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Received, ReadError>>> {
        self.next(cx)
    }

    fn feed(&mut self, frame: &Outgoing) {
        if self.close_sent {
            return;
        }
        match frame {
            Outgoing::Text(bytes) | Outgoing::Binary(bytes) => {
                stream::encode(bytes, self.write.bytes_mut())
            }
            Outgoing::Ping => self.write.bytes_mut().extend_from_slice(stream::HEARTBEAT),
            Outgoing::Pong(_) => {}
            Outgoing::Close(code, reason) => {
                self.close_sent = true;
                stream::encode(&close_message(*code, reason), self.write.bytes_mut());
            }
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.write.reserve(additional);
    }

    fn unwritten(&self) -> usize {
        self.write.unwritten()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush(cx)
    }

    fn release_write_buffer(&mut self) {
        self.write.release();
    }

    fn kind(&self) -> TransportKind {
        self.kind
    }

    async fn linger(mut self) {
        // The close message is written: the client reads it, then the end of the stream.
        let _ = tokio::time::timeout(LINGER, self.io.shutdown()).await;
        let mut discard = tokio::io::sink();
        let raw = (&mut self.io).take(LINGER_BYTES);
        let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut { raw }, &mut discard)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    async fn next(socket: &mut ByteStream<DuplexStream>) -> Option<Result<Received, ReadError>> {
        poll_fn(|cx| socket.next(cx)).await
    }

    #[tokio::test]
    async fn messages_arrive_whole_in_any_pieces_and_a_quiet_connection_holds_no_buffer() {
        let (server, mut client) = tokio::io::duplex(256 * 1024);
        let mut socket = ByteStream::new(server, TransportKind::InProcess, 64 * 1024);
        let sizes = [1, 125, 5000, 16 * 1024, 40_000, 65_536];
        let mut wire = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            stream::encode(&vec![b'a' + i as u8; n], &mut wire);
        }
        wire.extend_from_slice(b"0\r\n");
        let writing = tokio::spawn(async move {
            for piece in wire.chunks(7_777) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        for (i, &n) in sizes.iter().enumerate() {
            match next(&mut socket).await {
                Some(Ok(Received::Binary(m))) => assert_eq!(m, vec![b'a' + i as u8; n]),
                other => panic!("message {i}: {other:?}"),
            }
        }
        assert!(matches!(
            next(&mut socket).await,
            Some(Ok(Received::Control))
        ));
        let _client = writing.await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(20), next(&mut socket)).await;
        assert!(waiting.is_err(), "nothing more was sent");
        assert_eq!(
            socket.read.capacity(),
            0,
            "a quiet connection holds no buffer"
        );
    }

    #[tokio::test]
    async fn a_stalled_large_frame_holds_its_own_size_charged_and_gives_it_back() {
        let (server, mut client) = tokio::io::duplex(256 * 1024);
        let budget = Arc::new(UnfinishedBudget::new(1 << 20, None));
        let mut socket = ByteStream::new(server, TransportKind::InProcess, 64 * 1024)
            .with_budget(budget.clone());
        client.write_all(b"65000\r\n").await.unwrap();
        client.write_all(&[b'a'; 40_000]).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), next(&mut socket)).await;
        assert!(waiting.is_err(), "the frame is not complete");
        assert_eq!(budget.held(), 7 + 65_000);
        assert_eq!(socket.read.capacity(), 7 + 65_000);
        client.write_all(&[b'a'; 25_000]).await.unwrap();
        match next(&mut socket).await {
            Some(Ok(Received::Binary(m))) => assert_eq!(m.len(), 65_000),
            other => panic!("expected the message, got {other:?}"),
        }
        let waiting = tokio::time::timeout(Duration::from_millis(20), next(&mut socket)).await;
        assert!(waiting.is_err());
        assert_eq!(budget.held(), 0, "the charge is given back");
    }

    #[tokio::test]
    async fn an_oversized_or_malformed_frame_ends_reading_with_a_close_code() {
        for (wire, code) in [(&b"65537\r\n"[..], 1009), (b"LHTTP/1.0 chat\r\n\r\n", 1002)] {
            let (server, mut client) = tokio::io::duplex(1024);
            let mut socket = ByteStream::new(server, TransportKind::InProcess, 65_536);
            client.write_all(wire).await.unwrap();
            match next(&mut socket).await {
                Some(Err(ReadError::Violation(broken))) => assert_eq!(broken.code, code),
                other => panic!("expected a violation, got {other:?}"),
            }
            assert!(next(&mut socket).await.is_none());
        }
    }

    #[tokio::test]
    async fn the_close_is_a_last_message_then_the_end_of_the_stream() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut socket = ByteStream::new(server, TransportKind::InProcess, 65_536);
        socket.feed(&Outgoing::Text(Bytes::from_static(
            b"LHTTP/1.0 chat\r\n\r\nhi",
        )));
        socket.feed(&Outgoing::Ping);
        socket.feed(&Outgoing::Close(1001, "server shutting down"));
        socket.feed(&Outgoing::Text(Bytes::from_static(
            b"LHTTP/1.0 late\r\n\r\n",
        )));
        poll_fn(|cx| socket.flush(cx)).await.unwrap();
        socket.linger().await;
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "20\r\nLHTTP/1.0 chat\r\n\r\nhi\r\n0\r\n\r\n\
             59\r\nLHTTP/1.0 close\r\ncode:1001\r\nreason:server shutting down\r\n\r\n\r\n"
        );
    }
}
