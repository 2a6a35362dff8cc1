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
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;
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
    match tungstenite::Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => WsMessage::Text(text),
        Err(_) => WsMessage::Binary(bytes),
    }
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

/// State shared by every producer of one connection and its writer.
#[derive(Debug)]
struct Shared {
    /// Bytes pushed and not yet written. Atomic because producers run on any thread.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Set once when the queue overflows. Checked on every push; an atomic load is much
    /// cheaper than `CancellationToken::is_cancelled`, which takes a mutex.
    overflowed_flag: AtomicBool,
    /// Cancelled together with the flag, to wake the writer, which then closes with 1008.
    overflowed: CancellationToken,
}

impl Shared {
    fn overflow(&self) {
        self.overflowed_flag.store(true, Relaxed);
        self.overflowed.cancel();
    }
}

/// The producing side of one connection's queue. Cheap to clone: the hub holds one per
/// subscription.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<WsMessage>,
    shared: Arc<Shared>,
}

/// The consuming side, owned by the writer task.
pub(crate) struct OutboxReceiver {
    rx: mpsc::Receiver<WsMessage>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// A queue of at most `max_messages` messages and `max_bytes` bytes.
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(max_messages);
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            overflowed_flag: AtomicBool::new(false),
            overflowed: CancellationToken::new(),
        });
        (
            Outbox {
                tx,
                shared: shared.clone(),
            },
            OutboxReceiver { rx, shared },
        )
    }

    /// Queues `message` without waiting; on overflow marks the connection as a slow consumer.
    pub(crate) fn push(&self, message: WsMessage) -> Result<(), SendError> {
        if self.shared.overflowed_flag.load(Relaxed) {
            return Err(SendError::SlowConsumer);
        }
        let len = message.len();
        let queued = self.shared.queued_bytes.fetch_add(len, Relaxed) + len;
        if queued > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(len, Relaxed);
            self.shared.overflow();
            return Err(SendError::SlowConsumer);
        }
        match self.tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.queued_bytes.fetch_sub(len, Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.shared.overflow();
                        Err(SendError::SlowConsumer)
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(SendError::Closed),
                }
            }
        }
    }

    /// Queues a close frame after everything already queued, waiting up to `timeout` for room.
    pub(crate) async fn push_close(&self, message: WsMessage, timeout: Duration) {
        let len = message.len();
        self.shared.queued_bytes.fetch_add(len, Relaxed);
        if self.tx.send_timeout(message, timeout).await.is_err() {
            self.shared.queued_bytes.fetch_sub(len, Relaxed);
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

impl OutboxReceiver {
    /// Takes everything queued without writing it anywhere; returns how many messages.
    #[doc(hidden)]
    pub(crate) fn drain(&mut self) -> usize {
        let mut count = 0;
        while let Ok(message) = self.rx.try_recv() {
            self.shared.queued_bytes.fetch_sub(message.len(), Relaxed);
            count += 1;
        }
        count
    }

    /// Writes queued messages to `sink`, several per flush, until a close frame is written,
    /// the producers are gone, the socket fails, or the queue overflows.
    pub(crate) async fn write_to<S>(mut self, mut sink: S, metrics: &Metrics) -> WriterEnd
    where
        S: Sink<WsMessage, Error = tungstenite::Error> + Unpin,
    {
        let overflowed = self.shared.overflowed.clone();
        loop {
            let first = tokio::select! {
                biased;
                _ = overflowed.cancelled() => return close_slow(&mut sink, metrics).await,
                m = self.rx.recv() => match m {
                    Some(m) => m,
                    None => return WriterEnd::Drained,
                },
            };
            let batch = write_batch(&mut sink, &mut self.rx, first);
            let outcome = tokio::select! {
                biased;
                _ = overflowed.cancelled() => return close_slow(&mut sink, metrics).await,
                outcome = batch => outcome,
            };
            self.shared.queued_bytes.fetch_sub(outcome.bytes, Relaxed);
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
    closed: bool,
    result: Result<(), tungstenite::Error>,
}

/// Feeds `first` and whatever else is already queued (up to [`MAX_BATCH`]), then flushes once.
async fn write_batch<S>(sink: &mut S, rx: &mut mpsc::Receiver<WsMessage>, first: WsMessage) -> Batch
where
    S: Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    let mut batch = Batch {
        count: 0,
        bytes: 0,
        closed: false,
        result: Ok(()),
    };
    let mut next = Some(first);
    let mut yielded = false;
    while let Some(message) = next.take() {
        batch.count += 1;
        batch.bytes += message.len();
        batch.closed = message.is_close();
        if let Err(e) = sink.feed(message).await {
            batch.result = Err(e);
            return batch;
        }
        if !batch.closed && (batch.count as usize) < MAX_BATCH {
            next = rx.try_recv().ok();
            if next.is_none() && !yielded {
                // The socket has no Nagle delay: each flush is a packet. Letting the producers
                // run once before flushing gathers a burst into one write.
                yielded = true;
                tokio::task::yield_now().await;
                next = rx.try_recv().ok();
            }
        }
    }
    batch.result = sink.flush().await;
    batch
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
