//! Channel history: the last messages of the channels `[[channels]]` says keep them, with
//! offsets, so that a client that reconnects receives exactly what it missed.
//!
//! Each such channel has a [`Stream`]: an epoch (random, new whenever the history before it was
//! lost), the offset of its next message (1, 2, 3, ... consecutive) and the messages kept,
//! oldest first, bounded by `history_size`, `history_bytes` and `history_ttl_secs`. A message
//! is kept as the very bytes its subscribers receive (with its `offset` and `epoch` headers),
//! shared with their queues: keeping it costs no copy.
//!
//! **No gap, no duplicate.** A publish to a stream takes the stream's lock, gives the message
//! its offset, keeps it and queues it for the subscribers, all before letting go. A subscribe
//! with catch-up takes the same lock, subscribes, and queues the answer and the missed
//! messages for the subscriber as one batch. So a publish happens wholly before the catch-up
//! (the message is among the missed ones, not live) or wholly after it (live, not among the
//! missed), and live messages follow the missed ones in offset order. Publishes to one history
//! channel are serialised by that lock; channels without history never take it.
//!
//! **Bounds.** Per channel by its options; over the server by `history.max_channels` streams
//! (a channel beyond it is published without history: no offset, nothing kept) and
//! `history.max_bytes` (a channel that would exceed it drops its own oldest messages first; a
//! message that still does not fit is not kept). Expiry runs on its own clock: [`History::
//! expire`] every [`EXPIRY_INTERVAL`], whatever the traffic.
//!
//! **Storage.** Memory is where history is read from. With `history.store = "disk"` every
//! change is also written, in batches, by one thread to an embedded database ([`store`]),
//! read back at start: history survives a restart and keeps its epoch after a clean stop. After
//! a crash (or writes the disk could not keep up with) every stream gets a new epoch, since
//! the last messages sent may not have been written.
//!
//! **Mirrors (cluster).** With `history.store = "jetstream"` the history is JetStream's
//! ([`crate::broker::history`]): the stream of each channel there gives its offsets and epoch,
//! and a node holds a [`Stream`] only as a *mirror* of it, while the channel has local
//! subscribers (or catch-ups waiting). The mirror is fed in offset order by one follower and is
//! what catch-ups read, under the same lock as the live deliveries it makes, so the guarantee
//! above holds on every node. A catch-up the mirror cannot answer yet (still loading, or the
//! client has seen offsets this node has not received yet) waits as a [`Pending`] for at most
//! [`PENDING_WAIT`].

pub(crate) mod store;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use dashmap::DashMap;
use lhttp_proto::{Message, names, pattern::Pattern};

use crate::{
    Channel,
    config::{ChannelOptions, HistoryConfig},
    metrics::{Metrics, add},
    pubsub::publish::encode_for_channel_with,
    transport::{ConnectionId, outbox::Outbox},
};
use store::{Journal, Loaded, Op};

/// How often expired messages are dropped: a message outlives its `history_ttl_secs` by at
/// most this.
pub(crate) const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes charged for a kept message besides its own: its place in the stream's queue.
const ENTRY_OVERHEAD: usize = 48;

/// Bytes charged for a stream besides its messages: the map entry, the name, the epoch.
const STREAM_OVERHEAD: usize = 160;

/// Longest a catch-up waits for a mirror (cluster): for it to load the channel's history from
/// JetStream, or to receive the offsets the client says it has seen. After it, the catch-up is
/// answered with what the mirror holds (`recovered:false` when that is not enough).
pub(crate) const PENDING_WAIT: Duration = Duration::from_secs(2);

/// Most catch-ups waiting on one mirror; one more is answered at once, as after
/// [`PENDING_WAIT`].
const MAX_PENDING: usize = 10_000;

/// What a client asks for on `subscribe` or a `history` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Want {
    /// Everything after `offset` in `epoch`.
    Since { offset: u64, epoch: String },
    /// The last `n` messages kept.
    Recent(usize),
}

/// What a catch-up asks: a channel, what of its history, and how the answer is named.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) channel: &'a str,
    pub(crate) want: &'a Want,
    /// `subscribed` or `history`.
    pub(crate) command: &'static str,
    /// Copied into the answer.
    pub(crate) request_id: Option<&'a str>,
}

/// One kept message.
#[derive(Debug)]
struct Entry {
    offset: u64,
    /// When it was published, in milliseconds since the Unix epoch (kept across restarts).
    at_ms: u64,
    /// The bytes subscribers received.
    frame: Bytes,
}

/// One channel's history.
#[derive(Debug)]
pub(crate) struct Stream {
    epoch: Box<str>,
    /// The offset the next message gets.
    next: u64,
    /// Offsets `next - entries.len()` to `next - 1`, oldest first.
    entries: VecDeque<Entry>,
    /// Bytes of `entries`, overheads included.
    bytes: usize,
    options: ChannelOptions,
    /// Set on a mirror of a JetStream stream (cluster); `None` on a node's own history.
    mirror: Option<Box<Mirror>>,
}

/// The state of a mirror besides its messages.
#[derive(Debug, Default)]
struct Mirror {
    /// Set once the follower has received everything JetStream held when it began; until
    /// then messages are kept but not delivered (they are history, not news).
    ready: bool,
    /// The offset that makes the mirror ready once received.
    ready_at: u64,
    /// Set when the mirror left the server's map: a catch-up that finds it must look again.
    closed: bool,
    /// Catch-ups waiting for this mirror, oldest first.
    pending: Vec<Pending>,
}

/// A catch-up waiting for a mirror.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The connection to subscribe once answered; `None` for a plain history read.
    pub(crate) subscriber: Option<(ConnectionId, Outbox)>,
    /// Where the answer and the messages go.
    pub(crate) outbox: Outbox,
    pub(crate) want: Want,
    pub(crate) command: &'static str,
    pub(crate) request_id: Option<Box<str>>,
    pub(crate) deadline: Instant,
}

impl Pending {
    fn connection(&self) -> Option<ConnectionId> {
        self.subscriber.as_ref().map(|(id, _)| *id)
    }
}

impl Stream {
    fn new(epoch: Box<str>, next: u64, options: ChannelOptions) -> Self {
        Stream {
            epoch,
            next,
            entries: VecDeque::new(),
            bytes: 0,
            options,
            mirror: None,
        }
    }

    /// The offset of the last message published (0 before the first).
    fn last(&self) -> u64 {
        self.next - 1
    }

    /// The offset of the oldest message kept (`next` when none is).
    fn first(&self) -> u64 {
        self.next - self.entries.len() as u64
    }
}

/// What a catch-up sends: the answer, then the missed (or recent) messages.
pub(crate) struct Catchup {
    pub(crate) answer: Message,
    pub(crate) frames: Vec<Bytes>,
}

/// Every stream of the server, and the options that say which channels have one.
pub(crate) struct History {
    /// `[[channels]]` blocks that keep history, in the order given: the first that matches a
    /// channel decides.
    options: Vec<(Pattern, ChannelOptions)>,
    streams: DashMap<Channel, Arc<Mutex<Stream>>, foldhash::quality::RandomState>,
    /// Bytes held by every stream (`history.max_bytes`).
    bytes: AtomicUsize,
    max_bytes: usize,
    max_channels: usize,
    /// The disk store's writer; `None` with `history.store = "memory"` or `"jetstream"`.
    journal: Option<Journal>,
    /// `history.store = "jetstream"`: every stream is a mirror of JetStream's.
    mirrored: bool,
    /// `history.replicas`.
    replicas: usize,
    metrics: Arc<Metrics>,
}

impl History {
    /// The history of a server, `None` when no `[[channels]]` block keeps any (then publishing
    /// never looks here). Opens the disk store and reads it back.
    pub(crate) fn new(
        config: &HistoryConfig,
        channels: &[ChannelOptions],
        metrics: Arc<Metrics>,
    ) -> Result<Option<History>, String> {
        let options = channels
            .iter()
            .filter(|c| c.history_size > 0)
            .map(|c| {
                Pattern::parse(&c.pattern)
                    .map(|p| (p, c.clone()))
                    .map_err(|e| format!("channels.pattern {:?}: {e}", c.pattern))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if options.is_empty() {
            return Ok(None);
        }
        let history = History {
            options,
            streams: DashMap::default(),
            bytes: AtomicUsize::new(0),
            max_bytes: config.max_bytes,
            max_channels: config.max_channels,
            journal: None,
            mirrored: config.store == "jetstream",
            replicas: config.replicas,
            metrics,
        };
        match config.store.as_str() {
            "memory" | "jetstream" => Ok(Some(history)),
            _ => {
                let (journal, loaded) = Journal::open(&config.path, config.write_queue)?;
                let mut history = History {
                    journal: Some(journal),
                    ..history
                };
                history.restore(loaded);
                Ok(Some(history))
            }
        }
    }

    /// Takes back what the store held: streams whose channel still keeps history, within
    /// today's bounds (oldest messages dropped first), expired messages left out. After an
    /// unclean stop every stream gets a new epoch, and its messages are re-encoded with it.
    fn restore(&mut self, loaded: Loaded) {
        let now = now_ms();
        for stored in loaded.streams {
            let Ok(channel) = Channel::new(&stored.channel) else {
                continue;
            };
            let options = match self.options_for(&stored.channel) {
                Some(options) if self.streams.len() < self.max_channels => options.clone(),
                _ => {
                    self.write(|| Op::Remove { channel });
                    continue;
                }
            };
            let epoch = match loaded.clean {
                true => stored.epoch,
                false => new_epoch(),
            };
            let mut stream = Stream::new(epoch.clone(), stored.next, options);
            // Only a run of consecutive offsets ending at `next - 1` can serve a recovery.
            let mut expected = stored.next;
            let mut run = Vec::new();
            for (offset, at_ms, frame) in stored.messages.into_iter().rev() {
                if offset + 1 != expected {
                    break;
                }
                expected = offset;
                run.push((offset, at_ms, frame));
            }
            let ttl_ms = stream.options.history_ttl_secs.saturating_mul(1000);
            for (offset, at_ms, frame) in run.into_iter().rev() {
                if now.saturating_sub(at_ms) > ttl_ms {
                    continue;
                }
                let frame = match loaded.clean {
                    true => Some(frame),
                    false => reencode(&frame, &epoch),
                };
                let Some(frame) = frame else { continue };
                if stream
                    .entries
                    .back()
                    .is_some_and(|e| e.offset + 1 != offset)
                {
                    stream.entries.clear();
                    stream.bytes = 0;
                }
                let entry = Entry {
                    offset,
                    at_ms,
                    frame,
                };
                stream.bytes += entry_bytes(&entry);
                stream.entries.push_back(entry);
            }
            if stream
                .entries
                .back()
                .is_some_and(|e| e.offset + 1 != stream.next)
            {
                stream.entries.clear();
                stream.bytes = 0;
            }
            while stream.entries.len() > stream.options.history_size
                || stream.bytes > stream.options.history_bytes
                || self.bytes.load(Relaxed) + stream.bytes + STREAM_OVERHEAD > self.max_bytes
            {
                let Some(old) = stream.entries.pop_front() else {
                    break;
                };
                stream.bytes -= entry_bytes(&old);
            }
            if !loaded.clean {
                self.write(|| Op::Create {
                    channel: channel.clone(),
                    epoch: epoch.clone(),
                    next: stream.next,
                });
                for entry in &stream.entries {
                    self.write(|| Op::Append {
                        channel: channel.clone(),
                        offset: entry.offset,
                        slot: entry.offset % stream.options.history_size as u64,
                        at_ms: entry.at_ms,
                        frame: entry.frame.clone(),
                    });
                }
            }
            self.write(|| Op::Trim {
                channel: channel.clone(),
                before: stream.first(),
            });
            self.bytes
                .fetch_add(stream.bytes + STREAM_OVERHEAD, Relaxed);
            self.streams.insert(channel, Arc::new(Mutex::new(stream)));
        }
    }

    /// The options of the first `[[channels]]` block that keeps history and matches.
    fn options_for(&self, channel: &str) -> Option<&ChannelOptions> {
        if lhttp_proto::channel::is_inbox(channel) {
            return None;
        }
        self.options
            .iter()
            .find(|(pattern, _)| pattern.matches(channel))
            .map(|(_, options)| options)
    }

    /// The stream of `channel`, made now if the channel keeps history and has none yet;
    /// `None` when it keeps no history, or when `history.max_channels` streams exist.
    fn stream(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        if let Some(stream) = self.streams.get(channel) {
            return Some(stream.clone());
        }
        let options = self.options_for(channel)?.clone();
        let name = Channel::new(channel).ok()?;
        if self.streams.len() >= self.max_channels
            || self.bytes.load(Relaxed) + STREAM_OVERHEAD > self.max_bytes
        {
            add(&self.metrics.history_refused, 1);
            return None;
        }
        let stream = self
            .streams
            .entry(name.clone())
            .or_insert_with(|| {
                self.bytes.fetch_add(STREAM_OVERHEAD, Relaxed);
                if self.mirrored {
                    // Epoch and offsets come from JetStream once the follower has begun.
                    let mut stream = Stream::new("".into(), 1, options.clone());
                    stream.mirror = Some(Box::default());
                    return Arc::new(Mutex::new(stream));
                }
                let epoch = new_epoch();
                self.write(|| Op::Create {
                    channel: name.clone(),
                    epoch: epoch.clone(),
                    next: 1,
                });
                Arc::new(Mutex::new(Stream::new(epoch, 1, options)))
            })
            .clone();
        Some(stream)
    }

    /// Publishes `message` to the history channel `channel`: gives it the next offset, keeps
    /// it, and hands its bytes to `deliver` (which queues them for the subscribers) under the
    /// stream's lock. `None` when the channel keeps no history: the caller publishes as usual.
    pub(crate) fn publish(
        &self,
        channel: &str,
        message: &Message,
        deliver: impl FnOnce(Bytes) -> usize,
    ) -> Option<usize> {
        let stream = self.stream(channel)?;
        let mut stream = lock(&stream);
        let offset = stream.next;
        let frame = self.append(&mut stream, channel, offset, message);
        Some(deliver(frame))
    }

    /// Encodes `message` as offset `offset` of `stream` (the copy subscribers receive, with
    /// its `offset` and `epoch` headers), keeps it as the newest, and returns the copy.
    fn append(&self, stream: &mut Stream, channel: &str, offset: u64, message: &Message) -> Bytes {
        let mut digits = itoa::Buffer::new();
        let frame = encode_for_channel_with(
            message,
            channel,
            &[
                (names::OFFSET, digits.format(offset)),
                (names::EPOCH, &stream.epoch),
            ],
        );
        stream.next = offset + 1;
        self.keep(stream, channel, offset, frame.clone());
        frame
    }

    /// Keeps `frame` (offset `offset`, the newest) in `stream`, dropping its oldest messages
    /// to stay within its bounds and the server's; a message that does not fit even then is
    /// not kept (and recovery across it is not possible).
    fn keep(&self, stream: &mut Stream, channel: &str, offset: u64, frame: Bytes) {
        let entry = Entry {
            offset,
            at_ms: now_ms(),
            frame,
        };
        let size = entry_bytes(&entry);
        let fits = |stream: &Stream| {
            stream.entries.len() < stream.options.history_size
                && stream.bytes + size <= stream.options.history_bytes
                && self.bytes.load(Relaxed) + size <= self.max_bytes
        };
        let mut dropped = 0;
        while !fits(stream) && self.drop_oldest(stream) {
            dropped += 1;
        }
        if dropped > 0 {
            add(&self.metrics.history_trimmed, dropped);
        }
        if !fits(stream) {
            add(&self.metrics.history_refused, 1);
            self.write(|| Op::Trim {
                channel: channel_of(channel),
                before: offset + 1,
            });
            return;
        }
        stream.bytes += size;
        self.bytes.fetch_add(size, Relaxed);
        self.write(|| Op::Append {
            channel: channel_of(channel),
            offset,
            slot: offset % stream.options.history_size as u64,
            at_ms: entry.at_ms,
            frame: entry.frame.clone(),
        });
        stream.entries.push_back(entry);
        if dropped > 0 {
            self.write(|| Op::Trim {
                channel: channel_of(channel),
                before: stream.first(),
            });
        }
    }

    /// Answers a catch-up on `channel`: under the stream's lock, calls `subscribe` (which adds
    /// the subscription, or does nothing for a plain read), then gives the answer (`command`:
    /// `subscribed` or `history`) and the messages `want` asks for to `queue`, as one batch.
    /// A channel that keeps no history gets an answer with `count:0`, `recovered:false` and no
    /// epoch.
    pub(crate) fn catch_up<R>(
        &self,
        ask: Ask<'_>,
        subscribe: impl FnOnce(),
        queue: impl FnOnce(Catchup) -> R,
    ) -> R {
        let Some(stream) = self.stream(ask.channel) else {
            return without_history(ask, subscribe, queue);
        };
        let stream = lock(&stream);
        subscribe();
        queue(read(&stream, ask))
    }

    /// [`History::catch_up`] on a mirror (cluster): answered now when the mirror can, else
    /// left waiting as `wait()` makes it, and then `None` (the follower answers it, at the
    /// latest after [`PENDING_WAIT`]).
    pub(crate) fn catch_up_or_wait<R>(
        &self,
        ask: Ask<'_>,
        subscribe: impl FnOnce(),
        queue: impl FnOnce(Catchup) -> R,
        wait: impl FnOnce() -> Pending,
    ) -> Option<R> {
        loop {
            let Some(stream) = self.stream(ask.channel) else {
                return Some(without_history(ask, subscribe, queue));
            };
            let mut stream = lock(&stream);
            let Some(mirror) = stream.mirror.as_mut() else {
                subscribe();
                return Some(queue(read(&stream, ask)));
            };
            if mirror.closed {
                continue; // Removed meanwhile: a new one is made.
            }
            if mirror.pending.len() >= MAX_PENDING {
                return Some(without_history(ask, subscribe, queue));
            }
            if answerable(&stream, ask.want) {
                subscribe();
                return Some(queue(read(&stream, ask)));
            }
            let pending = wait();
            stream
                .mirror
                .as_mut()
                .expect("checked above")
                .pending
                .push(pending);
            return None;
        }
    }

    /// `history.max_channels`, `history.max_bytes` and `history.replicas`, which bound the
    /// JetStream streams of a cluster too.
    pub(crate) fn bounds(&self) -> (usize, usize, usize) {
        (self.max_channels, self.max_bytes, self.replicas)
    }

    /// True when `history.store = "jetstream"`.
    pub(crate) fn is_mirrored(&self) -> bool {
        self.mirrored
    }

    /// True when `channel` keeps history.
    pub(crate) fn keeps(&self, channel: &str) -> bool {
        self.options_for(channel).is_some()
    }

    /// The options of `channel`, when it keeps history.
    pub(crate) fn options(&self, channel: &str) -> Option<&ChannelOptions> {
        self.options_for(channel)
    }

    /// The mirror of `channel`, made now if there is none (`None` beyond the server's
    /// bounds: the channel is then followed without history).
    pub(crate) fn open_mirror(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        self.stream(channel)
    }

    /// Removes the mirror of `channel` unless catch-ups wait on it; true when it is gone.
    pub(crate) fn close_mirror(&self, channel: &str) -> bool {
        let Some(stream) = self.streams.get(channel).map(|s| s.clone()) else {
            return true;
        };
        let mut guard = lock(&stream);
        let Some(mirror) = guard.mirror.as_mut() else {
            return false;
        };
        if !mirror.pending.is_empty() {
            return false;
        }
        mirror.closed = true;
        self.streams
            .remove_if(channel, |_, s| Arc::ptr_eq(s, &stream));
        self.bytes.fetch_sub(guard.bytes + STREAM_OVERHEAD, Relaxed);
        guard.entries.clear();
        guard.bytes = 0;
        true
    }

    /// True when this node holds a mirror of `channel`.
    pub(crate) fn has_mirror(&self, channel: &str) -> bool {
        self.mirrored && self.streams.contains_key(channel)
    }

    /// True when catch-ups wait on the mirror of `channel`.
    pub(crate) fn has_pending(&self, channel: &str) -> bool {
        self.mirrored
            && self.streams.get(channel).is_some_and(|s| {
                lock(&s)
                    .mirror
                    .as_ref()
                    .is_some_and(|m| !m.pending.is_empty())
            })
    }

    /// Drops the waiting subscribe of `connection` to `channel`; true when there was one.
    pub(crate) fn cancel_pending(&self, channel: &str, connection: ConnectionId) -> bool {
        if !self.mirrored {
            return false;
        }
        let Some(stream) = self.streams.get(channel).map(|s| s.clone()) else {
            return false;
        };
        let mut guard = lock(&stream);
        let Some(mirror) = guard.mirror.as_mut() else {
            return false;
        };
        let before = mirror.pending.len();
        mirror
            .pending
            .retain(|p| p.connection() != Some(connection));
        before != mirror.pending.len()
    }

    /// A follower begins (or resumes) feeding the mirror `stream` of `channel` from JetStream,
    /// whose stream has epoch `epoch` and holds offsets `first..=last` (`first` is `last + 1`
    /// when it holds none). Returns the offset to read from, and when the next waiting
    /// catch-up's time is up. What the mirror held is kept when it continues in the same
    /// epoch, and dropped otherwise.
    pub(crate) fn mirror_begin(
        &self,
        stream: &Mutex<Stream>,
        channel: &str,
        (epoch, first, last): (&str, u64, u64),
        serve: impl FnMut(Pending, Catchup),
    ) -> (u64, Option<Instant>) {
        let mut guard = lock(stream);
        if *guard.epoch != *epoch || guard.next < first || guard.next > last + 1 {
            while self.drop_oldest(&mut guard) {}
            guard.epoch = epoch.into();
            guard.next = first.max(1);
        }
        let caught_up = guard.last() >= last;
        if let Some(mirror) = guard.mirror.as_mut() {
            mirror.ready_at = last;
            mirror.ready |= caught_up;
        }
        let due = self.serve_waiting(&mut guard, channel, serve);
        (guard.next, due)
    }

    /// Feeds the mirror `stream` of `channel` with `message`, offset `offset` in JetStream's
    /// stream: kept, and given to `deliver` (the local subscribers) once the mirror is ready.
    /// `caught_up` says JetStream holds nothing after it. Then answers the catch-ups that can
    /// be answered, and returns when the next waiting one's time is up. A gap in the offsets
    /// (JetStream trimmed them before they were read) leaves no recovery possible across it.
    pub(crate) fn mirror_apply(
        &self,
        stream: &Mutex<Stream>,
        channel: &str,
        (offset, message, caught_up): (u64, &Message, bool),
        deliver: impl FnOnce(Bytes),
        serve: impl FnMut(Pending, Catchup),
    ) -> Option<Instant> {
        let mut guard = lock(stream);
        if offset >= guard.next {
            if offset > guard.next {
                while self.drop_oldest(&mut guard) {}
            }
            let frame = self.append(&mut guard, channel, offset, message);
            let ready = guard.mirror.as_ref().is_some_and(|m| m.ready);
            if ready {
                deliver(frame);
            }
        }
        let last = guard.last();
        if let Some(mirror) = guard.mirror.as_mut() {
            mirror.ready |= caught_up || last >= mirror.ready_at;
        }
        self.serve_waiting(&mut guard, channel, serve)
    }

    /// Answers the catch-ups waiting on the mirror `stream` whose time is up; returns when
    /// the next one's is.
    pub(crate) fn mirror_due(
        &self,
        stream: &Mutex<Stream>,
        channel: &str,
        serve: impl FnMut(Pending, Catchup),
    ) -> Option<Instant> {
        self.serve_waiting(&mut lock(stream), channel, serve)
    }

    /// Hands every waiting catch-up that can be answered, or whose [`PENDING_WAIT`] is over,
    /// to `serve` with its answer; returns the earliest deadline of those still waiting.
    fn serve_waiting(
        &self,
        stream: &mut Stream,
        channel: &str,
        mut serve: impl FnMut(Pending, Catchup),
    ) -> Option<Instant> {
        let mirror = stream.mirror.as_mut()?;
        if mirror.pending.is_empty() {
            return None;
        }
        let now = Instant::now();
        let ready = mirror.ready;
        let waiting = std::mem::take(&mut mirror.pending);
        let mut next: Option<Instant> = None;
        let mut still = Vec::new();
        for pending in waiting {
            let ask = Ask {
                channel,
                want: &pending.want,
                command: pending.command,
                request_id: pending.request_id.as_deref(),
            };
            let catchup = if answerable(stream, ask.want) || (ready && pending.deadline <= now) {
                read(stream, ask)
            } else if pending.deadline <= now {
                // Never loaded (JetStream unreachable): subscribed, told nothing was recovered.
                nothing_kept(ask)
            } else {
                next = Some(next.map_or(pending.deadline, |n| n.min(pending.deadline)));
                still.push(pending);
                continue;
            };
            serve(pending, catchup);
        }
        if let Some(mirror) = stream.mirror.as_mut() {
            mirror.pending = still;
        }
        next
    }

    /// Drops the messages older than their channel's `history_ttl_secs`. Called every
    /// [`EXPIRY_INTERVAL`] by the server's expiry task.
    pub(crate) fn expire(&self) {
        let now = now_ms();
        for entry in self.streams.iter() {
            let mut stream = lock(entry.value());
            let ttl_ms = stream.options.history_ttl_secs.saturating_mul(1000);
            let mut dropped = 0;
            while stream
                .entries
                .front()
                .is_some_and(|e| now.saturating_sub(e.at_ms) > ttl_ms)
                && self.drop_oldest(&mut stream)
            {
                dropped += 1;
            }
            if dropped > 0 {
                add(&self.metrics.history_expired, dropped);
                self.write(|| Op::Trim {
                    channel: entry.key().clone(),
                    before: stream.first(),
                });
            }
        }
    }

    /// Drops the oldest message of `stream`; false when it keeps none.
    fn drop_oldest(&self, stream: &mut Stream) -> bool {
        let Some(old) = stream.entries.pop_front() else {
            return false;
        };
        let old = entry_bytes(&old);
        stream.bytes -= old;
        self.bytes.fetch_sub(old, Relaxed);
        true
    }

    /// Bytes held by every stream.
    pub(crate) fn held_bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }

    /// Streams held.
    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Writes what is still queued for the store and marks it cleanly closed, so that the
    /// next start keeps the epochs. Called once at the end of shutdown.
    pub(crate) fn close(&self) {
        if let Some(journal) = &self.journal {
            journal.close();
        }
    }

    /// Hands `op` to the store's writer (nothing without a disk store).
    fn write(&self, op: impl FnOnce() -> Op) {
        if let Some(journal) = &self.journal {
            journal.write(op(), &self.metrics);
        }
    }
}

/// What `ask` gets from `stream`: the answer, then the missed (or recent) messages.
fn read(stream: &Stream, ask: Ask<'_>) -> Catchup {
    let Ask {
        channel,
        want,
        command,
        request_id,
    } = ask;
    // Where the messages to send begin among those kept, if any are to be sent.
    let (skip, recovered) = match want {
        Want::Recent(n) => (Some(stream.entries.len().saturating_sub(*n)), false),
        Want::Since { offset, epoch } => {
            let complete = *epoch == *stream.epoch
                && *offset <= stream.last()
                && *offset + 1 >= stream.first();
            match complete {
                true => (Some((*offset + 1 - stream.first()) as usize), true),
                false => (None, false),
            }
        }
    };
    let frames: Vec<Bytes> = skip.map_or_else(Vec::new, |skip| {
        stream
            .entries
            .iter()
            .skip(skip)
            .map(|e| e.frame.clone())
            .collect()
    });
    let answer = answer(
        command,
        channel,
        Some(stream),
        request_id,
        frames.len(),
        want,
        recovered,
    );
    Catchup { answer, frames }
}

/// True when a mirror can answer `want` now: it is ready, and a client resuming in its epoch
/// has seen no offset it has not received yet.
fn answerable(stream: &Stream, want: &Want) -> bool {
    let Some(mirror) = &stream.mirror else {
        return true;
    };
    mirror.ready
        && match want {
            Want::Recent(_) => true,
            Want::Since { offset, epoch } => *epoch != *stream.epoch || *offset <= stream.last(),
        }
}

/// A catch-up on a channel that keeps no history: `subscribe`, then an answer with
/// `count:0`, `recovered:false` and no epoch.
pub(crate) fn without_history<R>(
    ask: Ask<'_>,
    subscribe: impl FnOnce(),
    queue: impl FnOnce(Catchup) -> R,
) -> R {
    subscribe();
    queue(nothing_kept(ask))
}

/// The answer to `ask` where nothing is kept: `count:0`, `recovered:false`, no epoch.
fn nothing_kept(ask: Ask<'_>) -> Catchup {
    Catchup {
        answer: answer(
            ask.command,
            ask.channel,
            None,
            ask.request_id,
            0,
            ask.want,
            false,
        ),
        frames: Vec::new(),
    }
}

/// The answer that precedes the messages of a catch-up.
fn answer(
    command: &str,
    channel: &str,
    stream: Option<&Stream>,
    request_id: Option<&str>,
    count: usize,
    want: &Want,
    recovered: bool,
) -> Message {
    let mut builder =
        Message::builder(command.to_owned()).header(names::CHANNEL, channel.to_owned());
    if let Some(stream) = stream {
        builder = builder
            .header(names::EPOCH, stream.epoch.to_string())
            .header(names::OFFSET, stream.last().to_string());
    }
    builder = builder.header(names::COUNT, count.to_string());
    if matches!(want, Want::Since { .. }) {
        builder = builder.header(names::RECOVERED, if recovered { "true" } else { "false" });
    }
    if let Some(id) = request_id {
        builder = builder.header(names::REQUEST_ID, id.to_owned());
    }
    builder.build().expect("answer headers are valid")
}

/// `frame` (a kept message) with its `epoch` header set to `epoch`.
fn reencode(frame: &Bytes, epoch: &str) -> Option<Bytes> {
    let mut message = Message::parse(frame.clone()).ok()?;
    let headers = message.headers_mut();
    headers.remove(names::EPOCH);
    headers.append(names::EPOCH, epoch.to_owned()).ok()?;
    Some(message.to_bytes())
}

fn entry_bytes(entry: &Entry) -> usize {
    entry.frame.len() + ENTRY_OVERHEAD
}

fn channel_of(channel: &str) -> Channel {
    Channel::new(channel).expect("a stream's channel is valid")
}

fn lock(stream: &Mutex<Stream>) -> std::sync::MutexGuard<'_, Stream> {
    stream.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new random epoch: 16 hex digits.
fn new_epoch() -> Box<str> {
    format!(
        "{:016x}",
        getrandom::u64().expect("the operating system's random generator")
    )
    .into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
