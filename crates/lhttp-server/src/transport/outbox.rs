//! [`Outbox`]: the bounded queue of messages waiting to be written to one client, and the
//! [`Writer`] that drains it into the socket.
//!
//! Every producer (the hub's fan-out, replies, other tasks holding a
//! [`crate::ConnectionHandle`]) pushes without waiting. When a client reads too slowly and its
//! queue reaches `limits.outbound_queue` messages or `limits.outbound_queue_bytes` bytes, the
//! push fails, the connection is marked overflowed, and its task closes it with code 1008
//! ("slow consumer", [`close_slow`]). A slow client therefore costs at most its queue, and never blocks a
//! publisher or the other subscribers.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::DELIVERY_LATENCY_BOUNDS_US,
    metrics::{Metrics, add},
    transport::{Outgoing, Transport},
};

/// Most messages written per flush: enough to turn a burst into few syscalls, few enough to
/// return to the overflow check regularly.
const MAX_BATCH: usize = 256;

/// Encoded bytes beyond which the writer stops adding frames and writes: one write's worth.
const WRITE_CHUNK: usize = 64 * 1024;

/// Flushes closer together than this make a stream, whose next batch waits one turn of the
/// producers to gather more (see [`Writer`]); a batch after a longer quiet is written at once.
/// Sporadic traffic (a chat message now and then) is far apart; a flood, microseconds apart.
const STREAM_GAP: Duration = Duration::from_micros(250);

/// How long a close frame may take to reach a client that is not reading.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Wraps encoded lhttp bytes in a text frame, or a binary frame when they are not UTF-8 (a
/// binary body); the bytes are shared, not copied.
pub(crate) fn frame(bytes: Bytes) -> Outgoing {
    if std::str::from_utf8(&bytes).is_err() {
        return Outgoing::Binary(bytes);
    }
    Outgoing::Text(bytes)
}

/// A close frame with `code` and `reason`.
pub(crate) fn close_frame(code: u16, reason: &'static str) -> Outgoing {
    Outgoing::Close(code, reason)
}

/// Why a push did not queue the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The client's queue is full; the connection is being closed as a slow consumer.
    #[error("the client is not reading fast enough and is being disconnected")]
    SlowConsumer,
    /// The connection is gone.
    #[error("the connection is closed")]
    Closed,
}

/// The frames waiting for the writer, and what it needs to wake up.
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Outgoing>,
    /// Bytes pushed and not yet written (including the batch the writer is writing).
    bytes: usize,
    /// The writer, when it is waiting for frames.
    writer: Option<Waker>,
    /// Producers alive; at zero the writer ends once the queue is empty.
    senders: usize,
    /// The writer is gone: pushes fail with [`SendError::Closed`].
    closed: bool,
    /// When the oldest published message in `frames` was published ([`Outbox::push_at`]),
    /// for the delivery-latency histogram; taken with the frames.
    since: Option<Instant>,
}

/// State shared by every producer of one connection and its writer.
///
/// A plain mutex-guarded deque rather than a channel: producers (the hub's fan-out, replies)
/// take the lock for one `push_back`, and the writer takes it once per batch to swap the whole
/// deque out, so a burst of N frames costs N short uncontended locks and one wake-up. An empty
/// deque allocates nothing, which idle connections are grateful for.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    max_messages: usize,
    max_bytes: usize,
    /// Set once when the queue overflows. Checked on every push; an atomic load is much
    /// cheaper than `CancellationToken::is_cancelled`, which takes a mutex.
    overflowed_flag: AtomicBool,
    /// Cancelled together with the flag, or when the server API disconnects the connection
    /// (`POST /server/disconnect`), to wake the connection's task, which then closes the
    /// connection (1008 "slow consumer", or 4001 "disconnected by the server").
    ended: CancellationToken,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn overflow(&self) {
        self.overflowed_flag.store(true, Relaxed);
        self.ended.cancel();
    }
}

/// The producing side of one connection's queue. Cheap to clone: the hub holds one per
/// subscription.
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

/// The consuming side, which becomes the connection's [`Writer`].
pub(crate) struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.queue().senders += 1;
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        queue.senders -= 1;
        let writer = if queue.senders == 0 {
            queue.writer.take()
        } else {
            None
        };
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        queue.closed = true;
        // What nobody will write is freed now, not when the last producer goes.
        queue.frames = VecDeque::new();
        queue.bytes = 0;
    }
}

impl Outbox {
    /// A queue of at most `max_messages` messages and `max_bytes` bytes.
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                senders: 1,
                ..Queue::default()
            }),
            max_messages,
            max_bytes,
            overflowed_flag: AtomicBool::new(false),
            ended: CancellationToken::new(),
        });
        (
            Outbox {
                shared: shared.clone(),
            },
            OutboxReceiver { shared },
        )
    }

    /// Queues `message` without waiting; on overflow marks the connection as a slow consumer.
    pub(crate) fn push(&self, message: Outgoing) -> Result<(), SendError> {
        self.push_stamped(message, None)
    }

    /// [`Outbox::push`] for a message published at `published` (one clock reading per
    /// publish, shared by its deliveries): the writer measures from there how long the
    /// message waited to be written (`lhttp_delivery_latency_seconds`).
    pub(crate) fn push_at(&self, message: Outgoing, published: Instant) -> Result<(), SendError> {
        self.push_stamped(message, Some(published))
    }

    fn push_stamped(&self, message: Outgoing, published: Option<Instant>) -> Result<(), SendError> {
        if self.shared.overflowed_flag.load(Relaxed) {
            return Err(SendError::SlowConsumer);
        }
        let len = message.len();
        let mut queue = self.shared.queue();
        if queue.closed {
            return Err(SendError::Closed);
        }
        if queue.frames.len() >= self.shared.max_messages
            || queue.bytes + len > self.shared.max_bytes
        {
            drop(queue);
            self.shared.overflow();
            return Err(SendError::SlowConsumer);
        }
        queue.frames.push_back(message);
        queue.bytes += len;
        if queue.since.is_none() {
            queue.since = published;
        }
        let writer = queue.writer.take();
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Queues `messages` one after another with nothing between them, or none of them: on
    /// overflow marks the connection as a slow consumer, as [`Outbox::push`] does. (Not the
    /// body of `push`: `VecDeque::extend` with one frame cost 50-60 instructions more per
    /// delivery than `push_back`, callgrind 1 -> 100.)
    pub(crate) fn push_all(&self, messages: Vec<Outgoing>) -> Result<(), SendError> {
        if self.shared.overflowed_flag.load(Relaxed) {
            return Err(SendError::SlowConsumer);
        }
        let len: usize = messages.iter().map(Outgoing::len).sum();
        let mut queue = self.shared.queue();
        if queue.closed {
            return Err(SendError::Closed);
        }
        if queue.frames.len() + messages.len() > self.shared.max_messages
            || queue.bytes + len > self.shared.max_bytes
        {
            drop(queue);
            self.shared.overflow();
            return Err(SendError::SlowConsumer);
        }
        queue.frames.extend(messages);
        queue.bytes += len;
        let writer = queue.writer.take();
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Queues a close frame after everything already queued. It may exceed the limits by this
    /// one frame: a close must get through even to a full queue, and it is sent once.
    pub(crate) fn push_close(&self, message: Outgoing) {
        let mut queue = self.shared.queue();
        if queue.closed {
            return;
        }
        queue.bytes += message.len();
        queue.frames.push_back(message);
        let writer = queue.writer.take();
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// True once the queue overflowed.
    pub(crate) fn is_overflowed(&self) -> bool {
        self.shared.overflowed_flag.load(Relaxed)
    }

    /// Tells the connection's task to close the connection, after what is queued for it
    /// (the server API's disconnect). Pushes still succeed until it closes.
    pub(crate) fn disconnect(&self) {
        self.shared.ended.cancel();
    }

    /// Completes when the queue overflows or the connection is disconnected: the
    /// connection's task must close it ([`Outbox::is_overflowed`] tells which).
    pub(crate) async fn ended(&self) {
        self.shared.ended.cancelled().await
    }
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// It wrote a close frame that was queued.
    Closed,
    /// Every producer is gone and everything queued was written.
    Drained,
    /// Writing to the socket failed: the client is gone.
    Failed,
}

/// Deques larger than this are given back to the allocator when the writer goes idle, so a
/// burst does not leave an idle connection holding a big buffer.
const IDLE_CAPACITY: usize = 64;

/// Makes room in an empty write buffer, when a batch was just taken from the queue, for what
/// the writer will feed it from `batch` (at most one write's worth) in one allocation, rather than doubling towards it frame by frame: an
/// idle connection's buffer is given back, so every burst starts from nothing. A buffer that
/// still holds bytes grows as usual: reserving there would move those bytes for nothing.
fn reserve_for<T: Transport>(socket: &mut T, batch: &VecDeque<Outgoing>) {
    if socket.unwritten() > 0 {
        return;
    }
    let bytes = batch
        .iter()
        .take(MAX_BATCH)
        .map(|frame| frame.len() + T::MAX_FRAME_OVERHEAD)
        .sum::<usize>();
    socket.reserve(bytes.min(WRITE_CHUNK + T::MAX_FRAME_OVERHEAD));
}

impl OutboxReceiver {
    /// Waits until something is queued and takes all of it; empty once every producer is
    /// gone with nothing queued. For readers that are not a socket's writer: the server
    /// API reads a channel's history through an outbox of its own.
    pub(crate) async fn take_queued(&self) -> VecDeque<Outgoing> {
        std::future::poll_fn(|cx| {
            let mut queue = self.shared.queue();
            if !queue.frames.is_empty() || queue.senders == 0 {
                queue.bytes = 0;
                return Poll::Ready(std::mem::take(&mut queue.frames));
            }
            queue.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The writing side of the connection, fed from this queue.
    pub(crate) fn into_writer(self) -> Writer {
        Writer {
            receiver: self,
            ended: None,
            batch: VecDeque::new(),
            fed: Fed::default(),
            written: 0,
            yielded: false,
            last_flush: None,
            oldest: None,
        }
    }
}

/// What was fed to the socket since its last flush.
#[derive(Debug, Default)]
struct Fed {
    messages: u64,
    bytes: usize,
    /// A close frame was among them: nothing may follow it.
    close: bool,
}

/// Drains one connection's outbox into its socket, several frames per flush.
///
/// It is polled by the connection's own task beside the reading side (see `session`), never
/// awaited on its own, so everything it is in the middle of lives here rather than in a
/// future: dropping a poll loses no frame.
pub(crate) struct Writer {
    receiver: OutboxReceiver,
    /// How writing ended, once it has: every later poll says the same.
    ended: Option<WriterEnd>,
    /// Frames taken from the queue and not yet fed to the socket.
    batch: VecDeque<Outgoing>,
    fed: Fed,
    /// Bytes flushed but still counted against the queue's byte limit: given back under the
    /// queue lock the writer takes next anyway, rather than under a lock of their own.
    written: usize,
    /// The producers were given one turn to add to the current batch before its flush.
    yielded: bool,
    /// When the last flush completed: a batch that follows one within [`STREAM_GAP`] is part
    /// of a stream, and worth gathering.
    last_flush: Option<Instant>,
    /// When the oldest published message of the frames taken last was published: observed
    /// once they are flushed.
    oldest: Option<Instant>,
}

impl Writer {
    /// Feeds queued frames to `sink` and flushes them, until nothing is queued (`Pending`,
    /// woken by the next push) or writing is over: a close frame was written, every producer
    /// is gone and everything is written, or the socket failed. An overflow is not noticed
    /// here: the connection's task checks for it and ends with [`close_slow`].
    pub(crate) fn poll_write<T: Transport>(
        &mut self,
        socket: &mut T,
        cx: &mut Context<'_>,
        metrics: &Metrics,
    ) -> Poll<WriterEnd> {
        if let Some(end) = self.ended {
            return Poll::Ready(end);
        }
        let poll = self.write(socket, cx, metrics);
        if let Poll::Ready(end) = poll {
            self.ended = Some(end);
        }
        poll
    }

    /// True once writing is over.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.is_some()
    }

    fn write<T: Transport>(
        &mut self,
        socket: &mut T,
        cx: &mut Context<'_>,
        metrics: &Metrics,
    ) -> Poll<WriterEnd> {
        loop {
            while !self.fed.close
                && (self.fed.messages as usize) < MAX_BATCH
                && socket.unwritten() < WRITE_CHUNK
            {
                if self.batch.is_empty() {
                    self.take_queued();
                    reserve_for(socket, &self.batch);
                }
                let Some(message) = self.batch.pop_front() else {
                    break;
                };
                self.fed.messages += 1;
                self.fed.bytes += message.len();
                self.fed.close = message.is_close();
                socket.feed(&message);
            }
            if self.fed.messages == 0 && self.batch.is_empty() {
                let written = std::mem::take(&mut self.written);
                match self
                    .receiver
                    .poll_wait(&mut self.batch, written, &mut self.oldest, cx)
                {
                    Poll::Ready(None) => {
                        reserve_for(socket, &self.batch);
                        continue;
                    }
                    Poll::Ready(Some(end)) => return Poll::Ready(end),
                    Poll::Pending => {}
                }
                // Bytes the reading side queued (a pong) may still be unwritten.
                if socket.unwritten() > 0 {
                    match socket.poll_flush(cx) {
                        Poll::Ready(Err(_)) => return Poll::Ready(WriterEnd::Failed),
                        Poll::Ready(Ok(())) => {}
                        Poll::Pending => return Poll::Pending,
                    }
                }
                socket.release_write_buffer();
                return Poll::Pending;
            }
            if !self.yielded
                && !self.fed.close
                && (self.fed.messages as usize) < MAX_BATCH
                && socket.unwritten() < WRITE_CHUNK
                && self.last_flush.is_some_and(|at| at.elapsed() < STREAM_GAP)
            {
                // The socket has no Nagle delay: each write is a packet. In a stream of
                // messages, letting the producers run once before writing gathers a burst into
                // one write. A lone message is written at once: the turn given away is a
                // reschedule that wakes another worker thread, which then takes this task
                // over to write it: half the server CPU an isolated message cost
                // (docs/performance.md, "Isolated messages").
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match socket.poll_flush(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(WriterEnd::Failed),
                Poll::Ready(Ok(())) => {}
            }
            // One clock reading per flush, for both of its uses.
            let flushed = Instant::now();
            self.last_flush = Some(flushed);
            let fed = std::mem::take(&mut self.fed);
            if let Some(published) = self.oldest.take() {
                // One observation per batch taken from the queue: the wait of its oldest
                // published message, the longest in it.
                let waited = flushed.saturating_duration_since(published).as_micros() as u64;
                metrics
                    .delivery_latencies
                    .observe(&DELIVERY_LATENCY_BOUNDS_US, waited);
            }
            self.yielded = false;
            self.written += fed.bytes;
            add(&metrics.messages_sent, fed.messages);
            add(&metrics.bytes_sent, fed.bytes as u64);
            if fed.close {
                return Poll::Ready(WriterEnd::Closed);
            }
        }
    }

    /// Moves what is queued now into the batch, giving back the bytes written since.
    fn take_queued(&mut self) {
        let mut queue = self.receiver.shared.queue();
        queue.bytes = queue
            .bytes
            .saturating_sub(std::mem::take(&mut self.written));
        std::mem::swap(&mut queue.frames, &mut self.batch);
        self.oldest = self.oldest.or(queue.since.take());
    }
}

impl OutboxReceiver {
    /// With nothing to write: gives back the `written` bytes, then takes the frames queued
    /// meanwhile into `batch` (`Ready(None)`), ends the writer when every producer is gone, or
    /// waits for the next push (giving back large buffers first).
    fn poll_wait(
        &self,
        batch: &mut VecDeque<Outgoing>,
        written: usize,
        oldest: &mut Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<WriterEnd>> {
        let mut queue = self.shared.queue();
        queue.bytes = queue.bytes.saturating_sub(written);
        if !queue.frames.is_empty() {
            std::mem::swap(&mut queue.frames, batch);
            *oldest = oldest.or(queue.since.take());
            return Poll::Ready(None);
        }
        if queue.senders == 0 {
            return Poll::Ready(Some(WriterEnd::Drained));
        }
        if batch.capacity() > IDLE_CAPACITY {
            *batch = VecDeque::new();
        }
        if queue.frames.capacity() > IDLE_CAPACITY {
            queue.frames = VecDeque::new();
        }
        match &queue.writer {
            Some(writer) if writer.will_wake(cx.waker()) => {}
            _ => queue.writer = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Sends close 1008 "slow consumer" after what the socket already took, giving up after
/// [`CLOSE_WRITE_TIMEOUT`] (a slow consumer may not read it at all).
pub(crate) async fn close_slow<T: Transport>(socket: &mut T, metrics: &Metrics) {
    add(&metrics.slow_consumers, 1);
    socket.feed(&close_frame(1008, "slow consumer"));
    let written = std::future::poll_fn(|cx| socket.poll_flush(cx));
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, written).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::websocket::WebSocket;
    use futures_util::StreamExt;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::{
        WebSocketStream,
        tungstenite::{self, protocol::Role},
    };

    fn text(s: &'static str) -> Outgoing {
        Outgoing::Text(Bytes::from_static(s.as_bytes()))
    }

    /// The server's socket over an in-memory pipe, and the client's end, read with tungstenite
    /// as a real client library would.
    async fn pipe() -> (WebSocket<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (WebSocket::new(server, 64 * 1024), client)
    }

    /// The text of the next `n` messages the client reads.
    async fn read_texts(client: &mut WebSocketStream<DuplexStream>, n: usize) -> Vec<String> {
        let mut seen = Vec::with_capacity(n);
        while seen.len() < n {
            match client.next().await {
                Some(Ok(tungstenite::Message::Text(text))) => seen.push(text.to_string()),
                other => panic!("expected a text message, got {other:?}"),
            }
        }
        seen
    }

    /// Writes until the writer ends, as a connection's task would between messages.
    async fn write_all(
        receiver: OutboxReceiver,
        mut socket: WebSocket<DuplexStream>,
        metrics: &Metrics,
    ) -> WriterEnd {
        let mut writer = receiver.into_writer();
        std::future::poll_fn(|cx| writer.poll_write(&mut socket, cx, metrics)).await
    }

    #[test]
    fn a_full_queue_refuses_and_marks_the_slow_consumer() {
        let (outbox, _receiver) = Outbox::new(2, 1000);
        outbox.push(text("a")).unwrap();
        outbox.push(text("b")).unwrap();
        assert_eq!(outbox.push(text("c")), Err(SendError::SlowConsumer));
        assert!(outbox.is_overflowed());
        // Once overflowed, even a push that would fit is refused: the connection is closing.
        assert_eq!(outbox.push(text("d")), Err(SendError::SlowConsumer));

        let (outbox, _receiver) = Outbox::new(100, 5);
        outbox.push(text("abc")).unwrap();
        assert_eq!(outbox.push(text("abc")), Err(SendError::SlowConsumer));
    }

    #[test]
    fn pushes_to_a_gone_writer_fail_as_closed_and_free_the_queue() {
        let (outbox, receiver) = Outbox::new(10, 1000);
        outbox.push(text("a")).unwrap();
        drop(receiver);
        assert_eq!(outbox.push(text("b")), Err(SendError::Closed));
        assert!(outbox.shared.queue().frames.capacity() == 0);
    }

    #[tokio::test]
    async fn the_writer_sends_everything_in_order_then_ends_when_producers_are_gone() {
        let (outbox, receiver) = Outbox::new(10_000, 1 << 20);
        let (socket, mut client) = pipe().await;
        let metrics = Metrics::default();
        let other = outbox.clone();
        let producer = tokio::spawn(async move {
            for i in 0..5000u32 {
                let m = Outgoing::Text(i.to_string().into());
                other.push(m).unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let writer = tokio::spawn(async move { write_all(receiver, socket, &metrics).await });
        let seen = read_texts(&mut client, 5000).await;
        producer.await.unwrap();
        drop(outbox);
        assert_eq!(writer.await.unwrap(), WriterEnd::Drained);
        let numbers: Vec<u32> = seen.iter().map(|m| m.parse().unwrap()).collect();
        assert_eq!(numbers, (0..5000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_burst_leaves_no_big_buffer_behind_and_no_bytes_counted() {
        let (outbox, receiver) = Outbox::new(10_000, 1 << 20);
        let (socket, mut client) = pipe().await;
        let writer = tokio::spawn(async move {
            let metrics = Metrics::default();
            write_all(receiver, socket, &metrics).await
        });
        for _ in 0..3000 {
            outbox.push(text("burst")).unwrap();
        }
        assert!(
            read_texts(&mut client, 3000)
                .await
                .iter()
                .all(|t| t == "burst")
        );
        // The writer is idle again: its next wait released the queue's capacity and bytes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        {
            let queue = outbox.shared.queue();
            assert_eq!(queue.bytes, 0);
            assert!(queue.frames.capacity() <= IDLE_CAPACITY);
            assert!(queue.writer.is_some());
        }
        drop(outbox);
        assert_eq!(writer.await.unwrap(), WriterEnd::Drained);
    }
}
