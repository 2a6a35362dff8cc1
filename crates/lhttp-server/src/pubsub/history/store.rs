//! The disk store of channel history: an embedded database (redb) written by one thread.
//!
//! Publishers never wait for the disk: each change ([`Op`]) goes into a bounded queue
//! (`history.write_queue`), and the writer thread applies what has arrived in one transaction
//! at a time, at most every [`BATCH_INTERVAL`]. When the queue is full the change is dropped
//! and counted (`lhttp_history_write_dropped_total`), and the store is left marked unclean, so
//! that the next start gives every stream a new epoch instead of serving a history with a hole.
//!
//! Tables: `streams` (channel -> epoch, next offset, first offset kept), `messages` ((channel,
//! slot) -> offset, publish time and the message's bytes), and `meta` (`clean`: whether the
//! last run closed the store after writing everything). A channel's messages live in a ring of
//! `history_size` slots (slot = offset mod `history_size`): a new message overwrites the slot
//! of the one it pushes out, and trimming only moves the stream's first offset. Deleting rows
//! one by one cost redb about 17,000 instructions a message; an overwrite is one insert.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::{
    Channel,
    metrics::{Metrics, add},
};

/// How long the writer gathers changes before committing them; a crash loses at most this
/// much of history (and changes the epochs).
pub(crate) const BATCH_INTERVAL: Duration = Duration::from_millis(50);

const STREAMS: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("streams");
const MESSAGES: TableDefinition<(&str, u64), (u64, u64, &[u8])> = TableDefinition::new("messages");
const META: TableDefinition<&str, bool> = TableDefinition::new("meta");

/// One change to the store.
#[derive(Debug)]
pub(crate) enum Op {
    /// A stream was made (or got a new epoch).
    Create {
        channel: Channel,
        epoch: Box<str>,
        next: u64,
    },
    /// A message was kept in ring slot `slot`; the stream's next offset is `offset + 1`.
    Append {
        channel: Channel,
        offset: u64,
        slot: u64,
        at_ms: u64,
        frame: Bytes,
    },
    /// The messages before offset `before` are gone.
    Trim { channel: Channel, before: u64 },
    /// The stream is gone.
    Remove { channel: Channel },
    /// Sent last by [`Journal::close`]: no change was dropped, so the store may be marked
    /// clean once everything before it is written.
    Clean,
}

/// What the store held at start.
pub(crate) struct Loaded {
    /// The last run closed the store after writing everything it was given.
    pub(crate) clean: bool,
    pub(crate) streams: Vec<StoredStream>,
}

/// One stream as stored.
pub(crate) struct StoredStream {
    pub(crate) channel: String,
    pub(crate) epoch: Box<str>,
    pub(crate) next: u64,
    /// (offset, publish time in ms, bytes), by offset.
    pub(crate) messages: Vec<(u64, u64, Bytes)>,
}

/// The writer's side of the store.
pub(crate) struct Journal {
    sender: Mutex<Option<SyncSender<Op>>>,
    /// Set when a change was dropped: the store must not be marked clean.
    lost: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Opens (or creates) the store at `path`, reads it, marks it unclean until [`Journal::
    /// close`], and starts the writer thread with a queue of `queue` changes.
    pub(crate) fn open(path: &Path, queue: usize) -> Result<(Journal, Loaded), String> {
        let failed = |e: &dyn std::fmt::Display| format!("history.path {}: {e}", path.display());
        let db = Database::create(path).map_err(|e| failed(&e))?;
        let loaded = load(&db).map_err(|e| failed(&e))?;
        set_clean(&db, false).map_err(|e| failed(&e))?;
        let (sender, receiver) = mpsc::sync_channel(queue);
        let writer = std::thread::Builder::new()
            .name("lhttp-history".into())
            .spawn(move || write_loop(db, receiver))
            .map_err(|e| failed(&e))?;
        Ok((
            Journal {
                sender: Mutex::new(Some(sender)),
                lost: AtomicBool::new(false),
                writer: Mutex::new(Some(writer)),
            },
            loaded,
        ))
    }

    /// Queues `op` for the writer, never waiting; a full queue drops it (counted).
    pub(crate) fn write(&self, op: Op, metrics: &Metrics) {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sender) = sender.as_ref() else {
            return;
        };
        match sender.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.lost.store(true, Relaxed);
                add(&metrics.history_write_dropped, 1);
            }
        }
    }

    /// Lets the writer finish what is queued, waits for it, and marks the store clean unless
    /// a change was dropped.
    pub(crate) fn close(&self) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            // The writer marks the store clean once the queue is empty and disconnected.
            if !self.lost.load(Relaxed) {
                let _ = sender.send(Op::Clean);
            }
            drop(sender);
        }
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

/// A failure of the embedded database (boxed: its error is large, and rare).
#[derive(Debug)]
struct StoreError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(error: E) -> Self {
        StoreError(Box::new(error.into()))
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn load(db: &Database) -> Result<Loaded, StoreError> {
    let tx = db.begin_write()?;
    {
        // Made on first use, so that the reads below find them.
        tx.open_table(STREAMS)?;
        tx.open_table(MESSAGES)?;
        tx.open_table(META)?;
    }
    tx.commit()?;
    let tx = db.begin_read()?;
    let clean = tx
        .open_table(META)?
        .get("clean")?
        .is_some_and(|v| v.value());
    let streams_table = tx.open_table(STREAMS)?;
    let messages = tx.open_table(MESSAGES)?;
    let mut streams = Vec::new();
    for row in streams_table.iter()? {
        let (channel, value) = row?;
        let channel = channel.value().to_owned();
        let (epoch, next, first) = value.value();
        let mut stored = StoredStream {
            epoch: epoch.into(),
            next,
            messages: Vec::new(),
            channel,
        };
        let name = stored.channel.as_str();
        for row in messages.range((name, 0)..=(name, u64::MAX))? {
            let (_, value) = row?;
            let (offset, at_ms, frame) = value.value();
            // A slot may still hold a message that was trimmed, or pushed out by a smaller ring.
            if (first..next).contains(&offset) {
                stored
                    .messages
                    .push((offset, at_ms, Bytes::copy_from_slice(frame)));
            }
        }
        stored
            .messages
            .sort_unstable_by_key(|(offset, _, _)| *offset);
        streams.push(stored);
    }
    Ok(Loaded { clean, streams })
}

fn set_clean(db: &Database, clean: bool) -> Result<(), StoreError> {
    let tx = db.begin_write()?;
    tx.open_table(META)?.insert("clean", clean)?;
    tx.commit()?;
    Ok(())
}

/// Applies changes in batches until the queue is closed; then marks the store clean if the
/// last change was the clean mark.
fn write_loop(db: Database, receiver: Receiver<Op>) {
    let mut clean = false;
    loop {
        let first = match receiver.recv() {
            Ok(op) => op,
            Err(_) => break,
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_INTERVAL;
        let mut closed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(op) => batch.push(op),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if matches!(batch.last(), Some(Op::Clean)) {
            batch.pop();
            clean = true;
        }
        if let Err(error) = apply(&db, batch) {
            tracing::error!(%error, "history: writing the store failed; the next start gives every channel a new epoch");
            clean = false;
        }
        if closed {
            break;
        }
    }
    if clean {
        if let Err(error) = set_clean(&db, true) {
            tracing::error!(%error, "history: cannot mark the store closed cleanly");
        }
    }
}

/// Applies one batch in one transaction. Per channel, the batch's next and first offsets are
/// gathered and the stream's row written once.
fn apply(db: &Database, batch: Vec<Op>) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin_write()?;
    // The batch interval bounds what a crash loses; the unclean mark makes that loss safe.
    tx.set_durability(Durability::Eventual);
    {
        let mut streams = tx.open_table(STREAMS)?;
        let mut messages = tx.open_table(MESSAGES)?;
        // Channel -> (next offset, first offset) reached in this batch.
        let mut moved: HashMap<Channel, (u64, u64)> = HashMap::new();
        for op in batch {
            match op {
                Op::Create {
                    channel,
                    epoch,
                    next,
                } => {
                    let name = channel.as_str();
                    messages.retain_in((name, 0)..=(name, u64::MAX), |_, _| false)?;
                    streams.insert(name, (&*epoch, next, next))?;
                    moved.remove(name);
                }
                Op::Append {
                    channel,
                    offset,
                    slot,
                    at_ms,
                    frame,
                } => {
                    messages.insert((channel.as_str(), slot), (offset, at_ms, &frame[..]))?;
                    let (next, _) = moved.entry(channel).or_default();
                    *next = (*next).max(offset + 1);
                }
                Op::Trim { channel, before } => {
                    // A message published but not kept still moves the next offset.
                    let (next, first) = moved.entry(channel).or_default();
                    *next = (*next).max(before);
                    *first = (*first).max(before);
                }
                Op::Remove { channel } => {
                    let name = channel.as_str();
                    messages.retain_in((name, 0)..=(name, u64::MAX), |_, _| false)?;
                    streams.remove(name)?;
                    moved.remove(name);
                }
                Op::Clean => {}
            }
        }
        for (channel, (next, first)) in moved {
            let name = channel.as_str();
            let stored = streams.get(name)?.map(|v| {
                let (epoch, next, first) = v.value();
                (epoch.to_owned(), next, first)
            });
            if let Some((epoch, stored_next, stored_first)) = stored {
                let row = (
                    epoch.as_str(),
                    next.max(stored_next),
                    first.max(stored_first),
                );
                streams.insert(name, row)?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
