//! [`WebSocket`]: one upgraded connection's byte stream, read as client frames and written
//! with server frames, holding no buffer at all while the connection is quiet.
//!
//! Reading: while a connection holds no unread bytes, a socket read goes into a per-thread
//! scratch buffer of [`SCRATCH`] bytes and is decoded there; only bytes left over (the next
//! frames, or the start of one) are copied into a buffer of the connection's own. While bytes
//! keep coming, reads go straight into that buffer; the first read that finds the socket empty
//! gives it back. Each message's payload is copied out of the read buffer once, unmasked, into
//! an allocation of its own size, so a message kept for a long time (queued, retained) never
//! holds a whole read buffer with it.
//!
//! A frame larger than [`SCRATCH`] grows the connection's buffer as its bytes arrive: doubled
//! when full, up to exactly the frame's size, in allocations of that size. Growing with
//! `BytesMut::reserve`, as for small frames, doubles past it: a 64 KiB frame then held a
//! 128 KiB buffer (about 137 KiB in all with the connection), whose second half no byte would
//! ever use. Such a buffer, and a fragmented message's reassembly past [`SCRATCH`], is charged
//! to the server's [`UnfinishedBudget`]; a connection that would go over it fails with
//! [`ReadError::Busy`].
//!
//! Writing: frames are encoded one after another into a write buffer and written with one
//! syscall per batch; the writer gives the buffer back when it has nothing left to write.

use std::{
    io,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{Decoder, Incoming, MAX_SERVER_HEADER, encode_outgoing};
use crate::transport::{
    Outgoing, ReadError, Received, Transport, TransportKind, budget::UnfinishedBudget,
    deadline::Deadline, scratch, write::WriteBuffer,
};

/// How long the server keeps reading after it sent a close frame, so that the client's close
/// reply (and any data it was still sending) is consumed rather than answered with a TCP reset.
const LINGER: Duration = Duration::from_millis(500);

/// Most bytes read and discarded while lingering.
const LINGER_BYTES: u64 = 1 << 20;

/// Bytes read from the socket per syscall (at most, but for a large frame's payload); also the
/// size of buffer a connection holds, uncharged, for a frame split across reads.
pub(crate) const SCRATCH: usize = scratch::SIZE;

/// Encoded bytes waiting to be written beyond which a client's pings are not answered: a
/// client that sends pings and never reads the pongs is not buffered for.
const MAX_UNWRITTEN: usize = 64 * 1024;

/// The server's end of one WebSocket connection; see the module documentation.
#[derive(Debug)]
pub(crate) struct WebSocket<S> {
    io: S,
    /// Over TLS or not, for the metrics.
    kind: TransportKind,
    decoder: Decoder,
    /// Bytes read and not yet decoded; unallocated while the client is quiet.
    read: BytesMut,
    /// Encoded frames waiting to be written.
    write: WriteBuffer,
    /// Nothing more will be read: the client closed, the stream ended, or it broke the
    /// protocol.
    read_ended: bool,
    /// A close frame came from the client.
    close_received: bool,
    /// A close frame was queued to the client: no frame may follow it.
    close_sent: bool,
    /// Where large unfinished messages are charged; `None` counts nothing (unit tests).
    budget: Option<Arc<UnfinishedBudget>>,
    /// Bytes charged for `read` (grown for a large frame) and for the decoder's fragments.
    charged_read: u32,
    charged_fragments: u32,
    /// Whole messages, and control frames outside a fragmented message, decoded so far
    /// (wrapping): while it does not move, the unfinished message is the same one.
    completed: u32,
    /// The deadline of the message unfinished now.
    deadline: Deadline,
}

impl<S> WebSocket<S> {
    /// Takes over `io`, an upgraded connection, for messages of at most `max_message` bytes.
    pub(crate) fn new(io: S, max_message: usize) -> WebSocket<S> {
        WebSocket {
            io,
            kind: TransportKind::WebSocket,
            decoder: Decoder::new(max_message),
            read: BytesMut::new(),
            write: WriteBuffer::default(),
            read_ended: false,
            close_received: false,
            close_sent: false,
            budget: None,
            charged_read: 0,
            charged_fragments: 0,
            completed: 0,
            deadline: Deadline::default(),
        }
    }

    /// Marks the connection as one over TLS (`wss://`), for the metrics.
    pub(crate) fn over_tls(mut self, tls: bool) -> WebSocket<S> {
        if tls {
            self.kind = TransportKind::WebSocketTls;
        }
        self
    }

    /// Charges this connection's large unfinished messages to `budget`.
    pub(crate) fn with_budget(mut self, budget: Arc<UnfinishedBudget>) -> WebSocket<S> {
        self.budget = Some(budget);
        self
    }

    /// True while the client has sent part of a frame or of a fragmented message.
    fn unfinished(&self) -> bool {
        !self.read.is_empty() || self.decoder.in_fragments()
    }

    /// Charges or gives back the difference between `*charged` and `bytes`.
    fn charge(&mut self, which: Charge, bytes: usize) -> Result<(), ReadError> {
        // A charge is one frame with its header or one reassembled message: about
        // `max_message` at most. One beyond a u32 (messages over 4 GiB allowed) counts as over
        // the budget rather than being truncated.
        let bytes = u32::try_from(bytes).map_err(|_| ReadError::Busy)?;
        let charged = match which {
            Charge::Read => &mut self.charged_read,
            Charge::Fragments => &mut self.charged_fragments,
        };
        if let Some(budget) = &self.budget {
            if bytes > *charged {
                if !budget.try_charge((bytes - *charged) as usize) {
                    return Err(ReadError::Busy);
                }
            } else {
                budget.release((*charged - bytes) as usize);
            }
        }
        *charged = bytes;
        Ok(())
    }

    /// True once the client sent a close frame.
    #[cfg(test)]
    pub(crate) fn close_received(&self) -> bool {
        self.close_received
    }

    /// Encoded bytes not yet written.
    pub(crate) fn unwritten(&self) -> usize {
        self.write.unwritten()
    }

    /// Encodes `frame` after what waits to be written; [`WebSocket::poll_flush`] writes it.
    /// Once a close frame was queued, later frames are dropped: RFC 6455 allows nothing after
    /// it.
    pub(crate) fn feed(&mut self, frame: &Outgoing) {
        if self.close_sent {
            return;
        }
        self.close_sent = frame.is_close();
        encode_outgoing(frame, self.write.bytes_mut());
    }

    /// Makes room for `additional` more bytes of frames.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.write.reserve(additional);
    }

    /// Gives back the write buffer if everything in it was written: the writer has nothing more
    /// for now, and an idle connection should hold no buffer.
    pub(crate) fn release_write_buffer(&mut self) {
        self.write.release();
    }
}

/// Which of a connection's buffers a charge is for.
#[derive(Clone, Copy)]
enum Charge {
    Read,
    Fragments,
}

impl<S> Drop for WebSocket<S> {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.charged_read as usize + self.charged_fragments as usize);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Writes everything fed so far.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write.poll_flush(&mut self.io, cx)
    }

    /// The next message or control frame from the client; `None` once nothing more will be
    /// read (after the client's close frame, which is answered first, the end of the stream, or
    /// an error). Pings are answered with a pong here.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Received, ReadError>>> {
        if self.read_ended {
            return self.poll_ended(cx);
        }
        loop {
            let (item, used) = match self.decoder.decode(&self.read) {
                Ok(decoded) => decoded,
                Err(violation) => return self.fail(violation.into()),
            };
            self.read.advance(used);
            match item {
                Some(item) => return self.received(item, cx),
                None => match self.poll_read(cx) {
                    Poll::Ready(Ok(Some(item))) => return self.received(item, cx),
                    Poll::Ready(Ok(None)) => {}
                    Poll::Ready(Err(error)) => return self.fail(error),
                    Poll::Pending => {
                        return match self.poll_overdue(cx) {
                            Poll::Ready(()) => self.fail(ReadError::Overdue),
                            Poll::Pending => Poll::Pending,
                        };
                    }
                },
            }
        }
    }

    /// With the socket empty: notes the message left unfinished, if any, and completes once
    /// that message is past its deadline (see [`Deadline`]).
    fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.budget.as_ref().and_then(|b| b.timeout());
        let unfinished = self.unfinished();
        self.deadline.poll(timeout, unfinished, self.completed, cx)
    }

    /// Reads more bytes. A connection without unread bytes reads into the thread's scratch
    /// buffer and decodes straight from there (its first item is returned); what is left over
    /// is kept in the connection's own buffer, which takes later reads directly while bytes keep
    /// coming, and is given back when the socket has nothing more.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Incoming>, ReadError>> {
        // Only a frame split across reads leaves bytes here; most reads start empty.
        let frame_len = if self.read.is_empty() {
            0
        } else {
            self.decoder.frame_len(&self.read)
        };
        if self.charged_read != 0 && frame_len <= SCRATCH {
            // The large frame is done: its buffer goes, the next frame needs little.
            self.read = if self.read.is_empty() {
                BytesMut::new()
            } else {
                let mut small = BytesMut::with_capacity(SCRATCH);
                small.extend_from_slice(&self.read);
                small
            };
            let _ = self.charge(Charge::Read, 0);
        }
        if self.read.capacity() == 0 {
            return self.poll_read_via_scratch(cx);
        }
        if frame_len > SCRATCH {
            if let Err(error) = self.grow_for(frame_len) {
                return Poll::Ready(Err(error));
            }
        } else {
            self.read.reserve(SCRATCH);
        }
        let read = scratch::read_more(&mut self.io, cx, &mut self.read);
        if read.is_pending() && self.read.capacity() == 0 {
            let _ = self.charge(Charge::Read, 0);
        }
        read.map_ok(|()| None)
    }

    /// Makes room for the rest of the frame at the front of the read buffer, `frame_len`
    /// bytes in all, once the buffer is full: twice its bytes (at least 2 × [`SCRATCH`]), never
    /// more than the frame, charged to the budget before it is allocated. A client must send
    /// half of what the server holds for it.
    fn grow_for(&mut self, frame_len: usize) -> Result<(), ReadError> {
        let len = self.read.len();
        if self.read.capacity() > len {
            return Ok(());
        }
        // `len < frame_len`: the frame is not complete, or it would have been decoded.
        let target = frame_len.min(len.saturating_mul(2).max(2 * SCRATCH));
        self.charge(Charge::Read, target)?;
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(&self.read);
        self.read = grown;
        Ok(())
    }

    fn poll_read_via_scratch(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Incoming>, ReadError>> {
        let decoder = &mut self.decoder;
        let read = scratch::read(&mut self.io, cx, |bytes| Ok(decoder.decode(bytes)?));
        let (item, rest) = ready!(read)?;
        if let Some(rest) = rest {
            self.read = rest;
        }
        Poll::Ready(Ok(item))
    }

    /// Turns a decoded item into what the caller sees, answering pings and close frames.
    fn received(
        &mut self,
        item: Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Received, ReadError>>> {
        if !matches!(item, Incoming::Fragment) && !self.decoder.in_fragments() {
            self.completed = self.completed.wrapping_add(1);
        }
        match item {
            Incoming::Text(data) => Poll::Ready(Some(Ok(self.message(Received::Text(data))))),
            Incoming::Binary(data) => Poll::Ready(Some(Ok(self.message(Received::Binary(data))))),
            Incoming::Fragment => {
                let held = self.decoder.fragments_capacity();
                let charged = if held > SCRATCH { held } else { 0 };
                if charged != self.charged_fragments as usize {
                    if let Err(error) = self.charge(Charge::Fragments, charged) {
                        return self.fail(error);
                    }
                }
                Poll::Ready(Some(Ok(Received::Control)))
            }
            Incoming::Pong => Poll::Ready(Some(Ok(Received::Control))),
            Incoming::Ping(payload) => {
                // A client that pings and does not read gets no more pongs once this many
                // bytes wait (RFC 6455 lets a pong answer only the latest ping): its pings
                // cannot make the server buffer without bound, and reading goes on, so a
                // client that writes everything before it reads is never deadlocked.
                if self.unwritten() > MAX_UNWRITTEN {
                    return Poll::Ready(Some(Ok(Received::Control)));
                }
                self.feed(&Outgoing::Pong(payload));
                // Written now if the socket takes it; otherwise with the writer's next flush.
                if let Poll::Ready(Err(error)) = self.poll_flush(cx) {
                    return self.fail(error.into());
                }
                Poll::Ready(Some(Ok(Received::Control)))
            }
            Incoming::Close(code) => {
                self.close_received = true;
                self.end_reading();
                // The reply echoes the client's code (section 5.5.1); after our own close, the
                // client's is the reply and needs none.
                self.feed(&Outgoing::Close(code.unwrap_or(1000), ""));
                self.poll_ended(cx)
            }
        }
    }

    /// A whole message: the charge for its fragments, if it had any, is given back.
    fn message(&mut self, message: Received) -> Received {
        if self.charged_fragments != 0 {
            let _ = self.charge(Charge::Fragments, 0);
        }
        message
    }

    /// After reading ended: writes what is queued (a close reply above all), then ends.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Received, ReadError>>> {
        // A failed write changes nothing: the connection is ending either way.
        let _ = ready!(self.poll_flush(cx));
        Poll::Ready(None)
    }

    fn fail(&mut self, error: ReadError) -> Poll<Option<Result<Received, ReadError>>> {
        self.end_reading();
        Poll::Ready(Some(Err(error)))
    }

    /// After the close frame is written: reads until the client's close reply arrives or the
    /// stream ends; if the WebSocket layer already gave up on the stream (after a violation),
    /// drains the raw socket briefly so the client can read the close frame before the TCP
    /// connection closes.
    async fn linger_for_close(mut self) {
        let reading = std::future::poll_fn(|cx| {
            // Anything the client still sends is read and dropped, up to its close frame.
            while ready!(self.poll_next(cx)).is_some() {}
            Poll::Ready(())
        });
        let _ = tokio::time::timeout(LINGER, reading).await;
        if self.close_received {
            return;
        }
        // Reading gave up (a violation): the server closes its side first (RFC 6455, 7.1.1),
        // so that a client waiting for the end of the stream sees it at once, and drains what
        // the client still sends so that it can read the close frame before the connection
        // closes.
        if tokio::time::timeout(LINGER, self.io.shutdown())
            .await
            .is_err()
        {
            return;
        }
        let mut discard = tokio::io::sink();
        let raw = (&mut self.io).take(LINGER_BYTES);
        let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut { raw }, &mut discard)).await;
    }

    fn end_reading(&mut self) {
        self.read_ended = true;
        self.read = BytesMut::new();
        self.deadline = Deadline::default();
        self.decoder.forget_fragments();
        let _ = self.charge(Charge::Read, 0);
        let _ = self.charge(Charge::Fragments, 0);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WebSocket<S> {
    const MAX_FRAME_OVERHEAD: usize = MAX_SERVER_HEADER;

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Received, ReadError>>> {
        WebSocket::poll_next(self, cx)
    }

    fn feed(&mut self, frame: &Outgoing) {
        WebSocket::feed(self, frame)
    }

    fn reserve(&mut self, additional: usize) {
        WebSocket::reserve(self, additional)
    }

    fn unwritten(&self) -> usize {
        WebSocket::unwritten(self)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        WebSocket::poll_flush(self, cx)
    }

    fn release_write_buffer(&mut self) {
        WebSocket::release_write_buffer(self)
    }

    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn linger(self) -> impl std::future::Future<Output = ()> + Send {
        self.linger_for_close()
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, time::Duration};

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::{
        WebSocketStream,
        tungstenite::{
            Message,
            protocol::{CloseFrame, Role, frame::coding::CloseCode},
        },
    };

    use super::*;
    use bytes::Bytes;

    /// The server's socket and a real client library's, over an in-memory pipe that holds
    /// `capacity` bytes each way.
    async fn pair(capacity: usize) -> (WebSocket<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(capacity);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (WebSocket::new(server, 64 * 1024), client)
    }

    async fn next(socket: &mut WebSocket<DuplexStream>) -> Option<Result<Received, ReadError>> {
        poll_fn(|cx| socket.poll_next(cx)).await
    }

    #[tokio::test]
    async fn messages_arrive_whole_and_a_quiet_connection_holds_no_buffer() {
        let (mut socket, mut client) = pair(256 * 1024).await;
        let sizes = [0, 1, 125, 126, 5000, 65535, 65536];
        for (i, &n) in sizes.iter().enumerate() {
            client
                .feed(Message::Binary(vec![i as u8; n].into()))
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            match next(&mut socket).await {
                Some(Ok(Received::Binary(m))) => assert_eq!(m, vec![i as u8; n]),
                other => panic!("message {i}: {other:?}"),
            }
        }
        let waiting = tokio::time::timeout(Duration::from_millis(20), next(&mut socket)).await;
        assert!(waiting.is_err(), "nothing more was sent");
        assert_eq!(
            socket.read.capacity(),
            0,
            "a quiet connection holds no read buffer"
        );

        socket.feed(&Outgoing::Text(Bytes::from_static(b"hello")));
        socket.feed(&Outgoing::Binary(Bytes::from(vec![7; 70_000])));
        poll_fn(|cx| socket.poll_flush(cx)).await.unwrap();
        socket.release_write_buffer();
        assert_eq!(
            socket.write.capacity(),
            0,
            "nor a write buffer once written"
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::text("hello")
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(vec![7; 70_000].into())
        );
    }

    #[tokio::test]
    async fn text_arrives_as_text_and_binary_as_binary_whole_or_in_fragments() {
        use tokio_tungstenite::tungstenite::protocol::frame::{
            Frame,
            coding::{Data, OpCode},
        };
        let (mut socket, mut client) = pair(64 * 1024).await;
        client.feed(Message::text("hello")).await.unwrap();
        client
            .feed(Message::Binary(Bytes::from_static(b"\xff\x00")))
            .await
            .unwrap();
        for (kind, part, fin) in [
            (Data::Binary, "abc", false),
            (Data::Continue, "def", true),
            (Data::Text, "grü", false),
            (Data::Continue, "ße", true),
        ] {
            let frame = Frame::message(part.as_bytes().to_vec(), OpCode::Data(kind), fin);
            client.feed(Message::Frame(frame)).await.unwrap();
        }
        client.flush().await.unwrap();
        let mut received = Vec::new();
        while received.len() < 4 {
            match next(&mut socket).await {
                Some(Ok(Received::Control)) => {}
                Some(Ok(message)) => received.push(message),
                other => panic!("after {received:?}: {other:?}"),
            }
        }
        assert_eq!(
            received,
            [
                Received::Text(Bytes::from_static(b"hello")),
                Received::Binary(Bytes::from_static(b"\xff\x00")),
                Received::Binary(Bytes::from_static(b"abcdef")),
                Received::Text(Bytes::from("grüße")),
            ]
        );
    }

    #[tokio::test]
    async fn a_stalled_large_frame_holds_its_own_size_charged_and_gives_it_back() {
        use tokio::io::AsyncWriteExt;
        let (server, mut client) = tokio::io::duplex(256 * 1024);
        let budget = Arc::new(UnfinishedBudget::new(1 << 20, None));
        let mut socket = WebSocket::new(server, 64 * 1024).with_budget(budget.clone());
        // A masked binary frame announcing 65,000 bytes, of which 40,000 arrive.
        let mut frame = vec![0x82, 0x80 | 126];
        frame.extend_from_slice(&65_000u16.to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        let whole = frame.len() + 65_000;
        frame.extend_from_slice(&[b'a'; 40_000]);
        client.write_all(&frame).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), next(&mut socket)).await;
        assert!(waiting.is_err(), "the frame is not complete");
        assert!(socket.unfinished());
        // Buffer doubling would hold 128 KiB here.
        assert_eq!(socket.read.capacity(), whole);
        assert_eq!(budget.held(), whole);
        client.write_all(&[b'a'; 25_000]).await.unwrap();
        match next(&mut socket).await {
            Some(Ok(Received::Binary(m))) => assert_eq!(m.len(), 65_000),
            other => panic!("expected the message, got {other:?}"),
        }
        let waiting = tokio::time::timeout(Duration::from_millis(20), next(&mut socket)).await;
        assert!(waiting.is_err());
        assert!(!socket.unfinished());
        assert_eq!(budget.held(), 0, "the buffer's charge is given back");
        assert_eq!(socket.read.capacity(), 0);
    }

    #[tokio::test]
    async fn a_ping_is_answered_with_its_payload() {
        let (mut socket, mut client) = pair(64 * 1024).await;
        client
            .send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap();
        assert!(matches!(
            next(&mut socket).await,
            Some(Ok(Received::Control))
        ));
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"are you there"))
        );
    }

    #[tokio::test]
    async fn a_close_is_answered_with_its_code_and_ends_reading() {
        let (mut socket, mut client) = pair(64 * 1024).await;
        let close = CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        };
        client.send(Message::Close(Some(close))).await.unwrap();
        assert!(next(&mut socket).await.is_none());
        assert!(socket.close_received());
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected the close reply, got {other:?}"),
        }
        // Nothing may follow a close frame.
        socket.feed(&Outgoing::Text(Bytes::from_static(b"late")));
        assert_eq!(socket.unwritten(), 0);
    }

    #[tokio::test]
    async fn a_violation_ends_reading_with_its_close_code() {
        let (mut socket, mut client) = pair(256 * 1024).await;
        client
            .send(Message::Binary(vec![0; 64 * 1024 + 1].into()))
            .await
            .unwrap();
        match next(&mut socket).await {
            Some(Err(ReadError::Violation(broken))) => assert_eq!(broken.code, 1009),
            other => panic!("expected a violation, got {other:?}"),
        }
        assert!(
            next(&mut socket).await.is_none(),
            "nothing is read after it"
        );
        assert_eq!(socket.read.capacity(), 0);
    }

    #[tokio::test]
    async fn pongs_for_a_client_that_does_not_read_are_bounded_and_reading_goes_on() {
        let (mut socket, mut client) = pair(4096).await;
        let pinging = tokio::spawn(async move {
            for _ in 0..10_000 {
                client
                    .send(Message::Ping(vec![1; 100].into()))
                    .await
                    .unwrap();
            }
            client
        });
        for ping in 0..10_000 {
            match next(&mut socket).await {
                Some(Ok(Received::Control)) => {}
                other => panic!("ping {ping}: {other:?}"),
            }
            assert!(socket.unwritten() <= MAX_UNWRITTEN + 2 + 100);
        }
        // Every ping was read, though the client read no pong: it is never left blocked.
        let _client = pinging.await.unwrap();
        assert!(
            socket.unwritten() > MAX_UNWRITTEN - 1000,
            "{}",
            socket.unwritten()
        );
    }
}
