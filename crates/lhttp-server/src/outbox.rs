//! [`Outbox`]: the bounded queue of messages waiting to be written to one client, and the
//! writer task that drains it.
//!
//! Every producer (the hub's fan-out, replies, other tasks holding a
//! [`crate::ConnectionHandle`]) pushes without waiting. When a client reads too slowly and its
//! queue reaches `limits.outbound_queue` messages or `limits.outbound_queue_bytes` bytes, the
//! push fails, the connection is marked overflowed, and the writer closes it with code 1008
//! ("slow consumer"). A slow client therefore costs at most its queue, and never blocks a
//! publisher or the other subscribers.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    task::{Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::{
    self,
    protocol::{CloseFrame, frame::coding::CloseCode},
};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, add};

/// A WebSocket message as the writer sends it.
pub(crate) type WsMessage = tungstenite::Message;

/// Most messages written per flush: enough to turn a burst into few syscalls, few enough to
/// return to the overflow check regularly.
const MAX_BATCH: usize = 256;

/// How long a close frame may take to reach a client that is not reading.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Wraps encoded lhttp bytes in a text frame, or a binary frame when they are not UTF-8 (a
/// binary body); the bytes are shared, not copied.
pub(crate) fn frame(bytes: Bytes) -> WsMessage {
    // Checked before the conversion, which consumes the bytes: cloning them to keep them for
    // the binary case would allocate a shared header for bytes that are never shared.
    if std::str::from_utf8(&bytes).is_err() {
        return WsMessage::Binary(bytes);
    }
    // SAFETY: the bytes were found to be UTF-8 just above (and `Bytes` is immutable); the
    // checked conversion would scan them a second time.
    WsMessage::Text(unsafe { tungstenite::Utf8Bytes::from_bytes_unchecked(bytes) })
}

/// A close frame with `code` and `reason`.
pub(crate) fn close_frame(code: u16, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: tungstenite::Utf8Bytes::from_static(reason),
    }))
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
    frames: VecDeque<WsMessage>,
    /// Bytes pushed and not yet written (including the batch the writer is writing).
    bytes: usize,
    /// The writer, when it is waiting for frames.
    writer: Option<Waker>,
    /// Producers alive; at zero the writer ends once the queue is empty.
    senders: usize,
    /// The writer is gone: pushes fail with [`SendError::Closed`].
    closed: bool,
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
    /// Cancelled together with the flag, to wake the writer, which then closes with 1008.
    overflowed: CancellationToken,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn overflow(&self) {
        self.overflowed_flag.store(true, Relaxed);
        self.overflowed.cancel();
    }
}

/// The producing side of one connection's queue. Cheap to clone: the hub holds one per
/// subscription.
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

/// The consuming side, owned by the writer task.
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
            overflowed: CancellationToken::new(),
        });
        (
            Outbox {
                shared: shared.clone(),
            },
            OutboxReceiver { shared },
        )
    }

    /// Queues `message` without waiting; on overflow marks the connection as a slow consumer.
    pub(crate) fn push(&self, message: WsMessage) -> Result<(), SendError> {
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
        let writer = queue.writer.take();
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Queues a close frame after everything already queued. It may exceed the limits by this
    /// one frame: a close must get through even to a full queue, and it is sent once.
    pub(crate) fn push_close(&self, message: WsMessage) {
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

    /// Completes when the queue overflows.
    pub(crate) async fn overflowed(&self) {
        self.shared.overflowed.cancelled().await
    }
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// It wrote a close frame that was queued.
    Closed,
    /// Every producer is gone.
    Drained,
    /// The queue overflowed; it sent (or tried to send) close 1008.
    SlowConsumer,
    /// Writing to the socket failed: the client is gone.
    Failed,
}

/// Deques larger than this are given back to the allocator when the writer goes idle, so a
/// burst does not leave an idle connection holding a big buffer.
const IDLE_CAPACITY: usize = 64;

impl OutboxReceiver {
    /// Takes everything queued without writing it anywhere; returns how many messages.
    #[doc(hidden)]
    pub(crate) fn drain(&mut self) -> usize {
        let mut queue = self.shared.queue();
        queue.bytes = 0;
        queue.frames.drain(..).count()
    }

    /// Waits until frames are queued and swaps them into `batch` (which must be empty), after
    /// releasing the `written` bytes of the previous batch; `false` once every producer is gone
    /// and nothing is left.
    async fn next_batch(&mut self, batch: &mut VecDeque<WsMessage>, mut written: usize) -> bool {
        std::future::poll_fn(|cx| {
            let mut queue = self.shared.queue();
            queue.bytes = queue.bytes.saturating_sub(std::mem::take(&mut written));
            if !queue.frames.is_empty() {
                std::mem::swap(&mut queue.frames, batch);
                return Poll::Ready(true);
            }
            if queue.senders == 0 {
                return Poll::Ready(false);
            }
            if batch.capacity() > IDLE_CAPACITY {
                *batch = VecDeque::new();
            }
            if queue.frames.capacity() > IDLE_CAPACITY {
                queue.frames = VecDeque::new();
            }
            queue.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Frames queued right now, swapped into `batch` (which must be empty); releases `written`.
    fn try_batch(&mut self, batch: &mut VecDeque<WsMessage>, written: usize) {
        let mut queue = self.shared.queue();
        queue.bytes = queue.bytes.saturating_sub(written);
        std::mem::swap(&mut queue.frames, batch);
    }

    /// Writes queued messages to `sink`, several per flush, until a close frame is written,
    /// the producers are gone, the socket fails, or the queue overflows.
    pub(crate) async fn write_to<S>(mut self, mut sink: S, metrics: &Metrics) -> WriterEnd
    where
        S: Sink<WsMessage, Error = tungstenite::Error> + Unpin,
    {
        let overflowed = self.shared.overflowed.clone();
        let mut batch = VecDeque::new();
        let mut written = 0;
        loop {
            tokio::select! {
                biased;
                _ = overflowed.cancelled() => return close_slow(&mut sink, metrics).await,
                more = self.next_batch(&mut batch, written) => if !more {
                    return WriterEnd::Drained;
                },
            }
            let write = write_batch(&mut sink, &mut self, &mut batch);
            let outcome = tokio::select! {
                biased;
                _ = overflowed.cancelled() => return close_slow(&mut sink, metrics).await,
                outcome = write => outcome,
            };
            written = outcome.unreleased;
            add(&metrics.messages_sent, outcome.count);
            add(&metrics.bytes_sent, outcome.bytes as u64);
            match outcome.result {
                Err(_) => return WriterEnd::Failed,
                Ok(()) if outcome.closed => return WriterEnd::Closed,
                Ok(()) => {}
            }
        }
    }
}

struct Batch {
    count: u64,
    bytes: usize,
    /// Bytes written but still counted in the queue, released with the next batch.
    unreleased: usize,
    closed: bool,
    result: Result<(), tungstenite::Error>,
}

/// Feeds `batch` and whatever is queued meanwhile (up to [`MAX_BATCH`] messages), then
/// flushes once.
async fn write_batch<S>(
    sink: &mut S,
    receiver: &mut OutboxReceiver,
    batch: &mut VecDeque<WsMessage>,
) -> Batch
where
    S: Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    let mut outcome = Batch {
        count: 0,
        bytes: 0,
        unreleased: 0,
        closed: false,
        result: Ok(()),
    };
    let mut yielded = false;
    loop {
        while let Some(message) = batch.pop_front() {
            outcome.count += 1;
            outcome.bytes += message.len();
            outcome.unreleased += message.len();
            outcome.closed = message.is_close();
            if let Err(e) = sink.feed(message).await {
                outcome.result = Err(e);
                return outcome;
            }
            if outcome.closed {
                break;
            }
        }
        if outcome.closed || outcome.count as usize >= MAX_BATCH {
            break;
        }
        // Release what was fed so far and take what arrived meanwhile.
        receiver.try_batch(batch, std::mem::take(&mut outcome.unreleased));
        if batch.is_empty() && !yielded {
            // The socket has no Nagle delay: each flush is a packet. Letting the producers
            // run once before flushing gathers a burst into one write.
            yielded = true;
            tokio::task::yield_now().await;
            receiver.try_batch(batch, 0);
        }
        if batch.is_empty() {
            break;
        }
    }
    outcome.result = sink.flush().await;
    outcome
}

async fn close_slow<S>(sink: &mut S, metrics: &Metrics) -> WriterEnd
where
    S: Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    add(&metrics.slow_consumers, 1);
    let close = close_frame(1008, "slow consumer");
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(close)).await;
    WriterEnd::SlowConsumer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &'static str) -> WsMessage {
        WsMessage::Text(tungstenite::Utf8Bytes::from_static(s))
    }

    /// A sink that collects what the writer sends.
    fn collector() -> (
        impl Sink<WsMessage, Error = tungstenite::Error> + Unpin,
        Arc<Mutex<Vec<WsMessage>>>,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = futures_util::sink::unfold(seen.clone(), |seen, m: WsMessage| async move {
            seen.lock().unwrap().push(m);
            Ok::<_, tungstenite::Error>(seen)
        });
        (Box::pin(sink), seen)
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
        let (sink, seen) = collector();
        let metrics = Metrics::default();
        let other = outbox.clone();
        let producer = tokio::spawn(async move {
            for i in 0..5000u32 {
                let m = WsMessage::Text(i.to_string().into());
                other.push(m).unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let writer = tokio::spawn(async move { receiver.write_to(sink, &metrics).await });
        producer.await.unwrap();
        drop(outbox);
        assert_eq!(writer.await.unwrap(), WriterEnd::Drained);
        let seen = seen.lock().unwrap();
        let numbers: Vec<u32> = seen
            .iter()
            .map(|m| m.to_text().unwrap().parse().unwrap())
            .collect();
        assert_eq!(numbers, (0..5000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_burst_leaves_no_big_buffer_behind_and_no_bytes_counted() {
        let (outbox, receiver) = Outbox::new(10_000, 1 << 20);
        let (sink, seen) = collector();
        let writer = tokio::spawn(async move {
            let metrics = Metrics::default();
            receiver.write_to(sink, &metrics).await
        });
        for _ in 0..3000 {
            outbox.push(text("burst")).unwrap();
        }
        while seen.lock().unwrap().len() < 3000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
