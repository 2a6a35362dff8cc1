//! The connection task: owns the connection (a [`Link`], whatever its transport), matches
//! answers to requests, fans deliveries out to subscriptions, and reconnects.
//!
//! **Recovery.** Each subscription remembers, per channel that keeps history, the position
//! (epoch and offset) of the last message it received. A reconnection subscribes to such a
//! channel with `since` and `epoch` (one channel per `subscribe`), and the server sends what
//! was missed after its `subscribed` answer; a delivery at or before a subscription's position
//! in the same epoch is a copy it already has, and is not handed to it again. An answer with
//! `recovered:false` becomes a [`Gap`] in the streams of the channel's subscriptions.
//!
//! **Liveness.** When nothing has arrived for the ping interval, the task sends
//! `LHTTP/1.0 ping`; when nothing arrives within the ping timeout after it, the connection is
//! dead (a network path can fail without either socket hearing of it) and is replaced. The
//! timer is not moved for every message: when it fires it looks at when the last one came.
//!
//! Everything mutable lives in this one task ([`Registry`]), so no lock is needed: the
//! [`crate::Client`] handles talk to it through a bounded command queue, and dropped
//! subscriptions through an unbounded queue that holds at most one id per subscription.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lhttp_proto::{Limits, Message, pattern::Pattern};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use crate::{
    ConnectionState, Error,
    client::Options,
    history::{self, Answer, Event, Gap, History, Position},
    transport::{self, Endpoint, Link, Received, WriteError},
};

pub(crate) use lhttp_proto::names::REQUEST_ID;
use lhttp_proto::names::{
    self, PUBLISH, QUEUE,
    command::{HISTORY, PING, SUBSCRIBED, UNSUBSCRIBED},
};

/// Channels per `subscribe` message when restoring after a reconnect, so that one message
/// stays far below the server's size limit (256 channels of 256 bytes would be 64 KiB).
const RESTORE_BATCH: usize = 64;

/// Once this many requests are pending, answers whose caller gave up are swept away.
const PENDING_SWEEP: usize = 256;

/// Identifies one [`crate::Subscription`] or [`crate::Incoming`] inside a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ListenerId(pub(crate) u64);

/// The sending end of a subscription's bounded buffer.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) tx: mpsc::Sender<Event>,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Queues `message`; when the buffer is full, drops it and counts.
    fn deliver(&self, message: &Message) {
        self.queue(Event::Message(message.clone()));
    }

    /// Queues a gap; counted as dropped, like a message, when the buffer is full.
    fn gap(&self, gap: Gap) {
        self.queue(Event::Gap(gap));
    }

    fn queue(&self, event: Event) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a [`crate::Client`] asks the connection task to do.
pub(crate) enum Command {
    Send {
        message: Message,
        done: oneshot::Sender<Result<(), Error>>,
    },
    Request {
        message: Message,
        id: String,
        answer: oneshot::Sender<Result<Message, Error>>,
    },
    Subscribe {
        id: ListenerId,
        channels: Vec<String>,
        /// `recent` (one channel): the last messages kept are sent first.
        recent: Option<usize>,
        /// `presence-info`: what presence lists show for this client on these channels.
        presence_info: Option<String>,
        sink: Sink,
        request_id: String,
        answer: oneshot::Sender<Result<Message, Error>>,
    },
    /// A `history` read: its answer and the messages that follow it.
    History {
        message: Message,
        id: String,
        answer: oneshot::Sender<Result<History, Error>>,
    },
    Unsubscribe {
        id: ListenerId,
        answer: Option<oneshot::Sender<Result<(), Error>>>,
    },
    Listen {
        id: ListenerId,
        sink: Sink,
    },
    /// Join a queue group: deliveries of `channel` through `group` go to `sink`.
    Join {
        id: ListenerId,
        worker: Worker,
        request_id: String,
        answer: oneshot::Sender<Result<Message, Error>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// An outstanding `request-id` of this client.
enum Pending {
    /// [`crate::Client::request`]: the answer goes to the caller.
    Request(oneshot::Sender<Result<Message, Error>>),
    /// A subscribe: an `error` answer also removes the listener.
    Subscribe {
        listener: ListenerId,
        answer: oneshot::Sender<Result<Message, Error>>,
    },
    /// An unsubscribe; `None` when nobody waits (a dropped subscription).
    Unsubscribe(Option<oneshot::Sender<Result<(), Error>>>),
    /// Restoring subscriptions after a reconnect; `since`: the position asked from, for a
    /// channel that keeps history.
    Restore { since: Option<Position> },
    /// A `history` read.
    History(oneshot::Sender<Result<History, Error>>),
    /// A liveness ping: its `pong` is only a sign of life.
    Ping,
}

struct Listener {
    /// Empty for an [`crate::Incoming`].
    channels: Vec<String>,
    sink: Sink,
    /// Per channel that keeps history, the last message this listener received.
    positions: HashMap<String, Position>,
}

impl Listener {
    fn new(channels: Vec<String>, sink: Sink) -> Self {
        Listener {
            channels,
            sink,
            positions: HashMap::new(),
        }
    }

    /// Whether a delivery of `channel` at `position` (its epoch and offset, if it has them) is
    /// new to this listener, which then remembers it.
    fn is_new(&mut self, channel: &str, position: Option<(&str, u64)>) -> bool {
        let Some((epoch, offset)) = position else {
            return true;
        };
        match self.positions.get_mut(channel) {
            Some(known) if known.epoch == epoch => {
                if offset <= known.offset {
                    return false;
                }
                known.offset = offset;
            }
            Some(known) => {
                known.epoch = epoch.to_owned();
                known.offset = offset;
            }
            None => {
                let position = Position {
                    epoch: epoch.to_owned(),
                    offset,
                };
                self.positions.insert(channel.to_owned(), position);
            }
        }
        true
    }

    /// Takes the channel's position from a `subscribed` answer: the messages that follow it
    /// come after `offset - count`. Messages already received in the same epoch stay received.
    fn caught_up(&mut self, answer: &Answer<'_>) {
        let Some(epoch) = answer.epoch else {
            // The channel keeps no history (any more).
            self.positions.remove(answer.channel);
            return;
        };
        let from = answer.offset.saturating_sub(answer.count as u64);
        let known = self.positions.get(answer.channel);
        if known.is_some_and(|p| p.epoch == epoch && p.offset >= from) {
            return;
        }
        let position = Position {
            epoch: epoch.to_owned(),
            offset: from,
        };
        self.positions.insert(answer.channel.to_owned(), position);
    }
}

/// A history read whose answer has come and whose messages are arriving. The server queues
/// the answer and its messages together, so they arrive one after another: one read at a time.
struct Reading {
    remaining: usize,
    history: History,
    answer: oneshot::Sender<Result<History, Error>>,
}

/// A membership of a queue group, and where its deliveries go.
pub(crate) struct Worker {
    pub(crate) channel: String,
    pub(crate) group: String,
    pub(crate) credit: usize,
    pub(crate) sink: Sink,
}

impl Worker {
    /// The message that joins the group (again, after a reconnect).
    fn join_message(&self, request_id: &str) -> Result<Message, Error> {
        Ok(Message::builder(names::SUBSCRIBE)
            .header(names::SUBSCRIBE, self.channel.clone())
            .header(QUEUE, self.group.clone())
            .header("credit", self.credit.to_string())
            .header(REQUEST_ID, request_id.to_owned())
            .build()?)
    }
}

/// The task's state: who listens to what, and which requests await an answer.
#[derive(Default)]
struct Registry {
    listeners: HashMap<ListenerId, Listener>,
    /// Listeners per channel; a channel is subscribed on the server while it has an entry.
    by_channel: HashMap<String, Vec<ListenerId>>,
    /// The `presence-info` a channel was last subscribed with, sent again when it is restored.
    presence_info: HashMap<String, String>,
    /// The wildcard patterns among `by_channel`'s keys (`sensor.*.temp`): a delivery names
    /// its concrete channel, which reaches these listeners too. Refreshed on every change of
    /// the keys.
    patterns: Vec<(String, Pattern)>,
    incoming: Vec<ListenerId>,
    /// Queue-group memberships, and the listener of each (channel, group).
    workers: HashMap<ListenerId, Worker>,
    by_queue: HashMap<(String, String), ListenerId>,
    pending: HashMap<String, Pending>,
    /// Restore requests not yet answered; `Connected` is announced when it empties.
    restoring: HashSet<String>,
    reading: Option<Reading>,
    next_internal_id: u64,
}

/// How a connected session ended.
enum End {
    /// Closed on purpose: stop, then tell the closer (if any) once the state says so.
    Closed(Option<oneshot::Sender<()>>),
    /// The connection broke or the server closed it; with the wait the server asked for
    /// before reconnecting (close 1012 "server restarting; retry in N ms").
    Lost(Option<Duration>),
}

/// A cheap local check that catches obvious mistakes ("a b" as one name); the server does the
/// full check (reserved characters, length) and answers 400.
pub(crate) fn plausible_channel(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The task body: sessions, and reconnect attempts between them.
pub(crate) async fn run(
    link: Link,
    endpoint: Endpoint,
    options: Options,
    mut commands: mpsc::Receiver<Command>,
    mut drops: mpsc::UnboundedReceiver<ListenerId>,
    state: watch::Sender<ConnectionState>,
) {
    let mut registry = Registry::default();
    let limits = Limits {
        max_size: options.max_message_size,
        max_headers: 1024,
        ..Limits::default()
    };
    let url = endpoint.label();
    let reconnects = options.reconnect && endpoint.can_reopen();
    let mut first = Some(link);
    let mut hint = None;
    let closer = loop {
        let link = match first.take() {
            Some(link) => link,
            None => {
                match reconnect(
                    &endpoint,
                    &options,
                    hint.take(),
                    &mut registry,
                    &mut commands,
                    &mut drops,
                )
                .await
                {
                    Ok(link) => link,
                    Err(closer) => break closer,
                }
            }
        };
        let end = session(
            link,
            &options,
            &limits,
            &mut registry,
            &mut commands,
            &mut drops,
            &state,
        )
        .await;
        registry.fail_pending(|| Error::Disconnected);
        match end {
            End::Closed(closer) => break closer,
            End::Lost(wait) if reconnects => {
                tracing::info!(url, "connection lost; reconnecting");
                hint = wait;
                state.send_replace(ConnectionState::Disconnected);
            }
            End::Lost(_) => {
                tracing::info!(url, "connection lost");
                break None;
            }
        }
    };
    registry.fail_pending(|| Error::Closed);
    // Dropping the sinks ends every subscription stream.
    registry.listeners.clear();
    state.send_replace(ConnectionState::Closed);
    if let Some(closer) = closer {
        let _ = closer.send(());
    }
}

/// Serves one connection until it ends.
async fn session(
    mut link: Link,
    options: &Options,
    limits: &Limits,
    registry: &mut Registry,
    commands: &mut mpsc::Receiver<Command>,
    drops: &mut mpsc::UnboundedReceiver<ListenerId>,
    state: &watch::Sender<ConnectionState>,
) -> End {
    // After a reconnect, the server knows none of our subscriptions: restore them before
    // announcing `Connected`, so that what is published after that reaches them.
    let write_timeout = options.request_timeout;
    for message in registry.restore_messages() {
        if !write(&mut link, &message, write_timeout).await {
            return End::Lost(None);
        }
    }
    if registry.restoring.is_empty() {
        state.send_if_modified(|s| replace(s, ConnectionState::Connected));
    }
    // Liveness: a connection silent for the ping interval is pinged, and one that stays silent
    // for the ping timeout after that is dead (a half-open TCP connection would otherwise
    // look alive forever).
    let mut liveness = Liveness::new(options);
    let check = tokio::time::sleep_until(liveness.next_check());
    tokio::pin!(check);
    loop {
        tokio::select! {
            () = &mut check, if liveness.on() => {
                match liveness.check(Instant::now()) {
                    Check::Later(at) => check.as_mut().reset(at),
                    Check::Ping => {
                        let id = registry.internal_id("ping");
                        let Ok(message) = Message::builder(PING).header(REQUEST_ID, id.clone()).build() else {
                            return End::Lost(None);
                        };
                        registry.add_pending(id, Pending::Ping);
                        if !write(&mut link, &message, write_timeout).await {
                            return End::Lost(None);
                        }
                        check.as_mut().reset(liveness.pinged(Instant::now()));
                    }
                    Check::Dead => {
                        tracing::debug!(
                            timeout = ?options.ping_timeout,
                            "no answer to a ping; the connection is dead"
                        );
                        return End::Lost(None);
                    }
                }
            }
            received = link.next() => {
                liveness.heard(Instant::now());
                let data = match received {
                    Received::Message(data) => data,
                    Received::Alive => {
                        // On a stream, answering the server's heartbeats keeps its idle
                        // timeout away from a client that only listens.
                        if link.should_answer_heartbeat() && !ping(&mut link, write_timeout).await {
                            return End::Lost(None);
                        }
                        continue;
                    }
                    Received::Closed { code, reason } => {
                        tracing::debug!(?code, reason, "server closed the connection");
                        if code == Some(lhttp_proto::names::CLOSE_DISCONNECTED) {
                            // The operator wanted this client gone: coming back would undo it.
                            tracing::info!(reason, "disconnected by the server; not reconnecting");
                            return End::Closed(None);
                        }
                        return End::Lost(retry_hint(code, &reason));
                    }
                    Received::Ended(reason) => {
                        tracing::debug!(?reason, "connection ended");
                        return End::Lost(None);
                    }
                };
                match Message::parse_with(data, limits) {
                    Ok(message) => {
                        registry.dispatch(message);
                        if registry.restoring.is_empty()
                            && *state.borrow() != ConnectionState::Connected
                        {
                            state.send_replace(ConnectionState::Connected);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a frame that is not lhttp"),
                }
            }
            command = commands.recv() => {
                let Some(command) = command else {
                    // Every handle is gone.
                    link.close().await;
                    return End::Closed(None);
                };
                match registry.online(command) {
                    Online::Write(message) => {
                        if !write(&mut link, &message, write_timeout).await {
                            return End::Lost(None);
                        }
                    }
                    Online::Nothing => {}
                    Online::Close(done) => {
                        link.close().await;
                        return End::Closed(Some(done));
                    }
                }
            }
            Some(id) = drops.recv() => {
                if let Some(message) = registry.remove_listener(id, None) {
                    if !write(&mut link, &message, write_timeout).await {
                        return End::Lost(None);
                    }
                }
            }
        }
    }
}

/// When to ping a silent connection, and when to give up on it.
struct Liveness {
    /// Silence before a ping; `None`: no pings, no liveness check.
    after: Option<Duration>,
    timeout: Duration,
    last_heard: Instant,
    /// When the ping that still waits for a sign of life was sent.
    ping_sent: Option<Instant>,
}

/// What a liveness check found.
enum Check {
    /// Nothing to do before this instant.
    Later(Instant),
    /// Silent for the ping interval: send a ping.
    Ping,
    /// Silent for the ping timeout after a ping: the connection is dead.
    Dead,
}

impl Liveness {
    fn new(options: &Options) -> Self {
        Liveness {
            after: options.ping_interval,
            timeout: options.ping_timeout,
            last_heard: Instant::now(),
            ping_sent: None,
        }
    }

    fn on(&self) -> bool {
        self.after.is_some()
    }

    /// When the first check is due (far away with pings off; the timer is then never polled).
    fn next_check(&self) -> Instant {
        self.last_heard + self.after.unwrap_or(Duration::from_secs(3600))
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    fn check(&mut self, now: Instant) -> Check {
        let Some(after) = self.after else {
            return Check::Later(now + Duration::from_secs(3600));
        };
        if let Some(sent) = self.ping_sent {
            if self.last_heard < sent {
                return match now >= sent + self.timeout {
                    true => Check::Dead,
                    false => Check::Later(sent + self.timeout),
                };
            }
            self.ping_sent = None;
        }
        match now >= self.last_heard + after {
            true => Check::Ping,
            false => Check::Later(self.last_heard + after),
        }
    }

    /// A ping was sent at `now`; returns when to look again.
    fn pinged(&mut self, now: Instant) -> Instant {
        self.ping_sent = Some(now);
        now + self.timeout
    }
}

/// Writes `message`; false when the connection failed or the write stalled past `timeout` (a
/// server that stopped reading).
async fn write(link: &mut Link, message: &Message, timeout: Duration) -> bool {
    written(
        tokio::time::timeout(timeout, link.send(message)).await,
        timeout,
    )
}

/// Writes a ping or heartbeat, as [`write`].
async fn ping(link: &mut Link, timeout: Duration) -> bool {
    written(tokio::time::timeout(timeout, link.ping()).await, timeout)
}

fn written(
    result: Result<Result<(), WriteError>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> bool {
    match result {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e.0, "write failed");
            false
        }
        Err(_) => {
            tracing::debug!(?timeout, "write stalled");
            false
        }
    }
}

fn replace(current: &mut ConnectionState, new: ConnectionState) -> bool {
    let changed = *current != new;
    *current = new;
    changed
}

/// Waits with jittered exponential backoff (the first wait: the server's `hint`, when it gave
/// one) and reconnects; handles commands meanwhile. `Err` when the client is closed, with the
/// closer to tell once closed.
async fn reconnect(
    endpoint: &Endpoint,
    options: &Options,
    mut hint: Option<Duration>,
    registry: &mut Registry,
    commands: &mut mpsc::Receiver<Command>,
    drops: &mut mpsc::UnboundedReceiver<ListenerId>,
) -> Result<Link, Option<oneshot::Sender<()>>> {
    let mut attempt: u32 = 0;
    loop {
        let delay = match hint.take() {
            Some(hint) => hint.min(options.backoff_max),
            None => backoff(options, attempt),
        };
        attempt = attempt.saturating_add(1);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                command = commands.recv() => match command {
                    None => return Err(None),
                    Some(Command::Close { done }) => return Err(Some(done)),
                    Some(command) => registry.offline(command),
                },
                Some(id) = drops.recv() => {
                    registry.remove_listener(id, None);
                }
            }
        }
        // Commands wait in their queue during the attempt, which the connect timeout bounds.
        match transport::open(endpoint, options).await {
            Ok(link) => {
                tracing::info!(url = endpoint.label(), attempt, "reconnected");
                return Ok(link);
            }
            Err(e) => tracing::debug!(error = %e, attempt, "reconnect attempt failed"),
        }
    }
}

/// The wait a server closing with 1012 ("service restart") asks for in its reason,
/// `... retry in N ms` (lhttpd spreads N over its clients, so that they do not all come back
/// at once).
fn retry_hint(code: Option<u16>, reason: &str) -> Option<Duration> {
    if code != Some(1012) {
        return None;
    }
    let (_, after) = reason.split_once("retry in ")?;
    let ms = after.strip_suffix(" ms")?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ms))
}

/// Attempt `n` waits between half and all of `min * 2^n`, capped at `max`.
fn backoff(options: &Options, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(20));
    let ceiling = options
        .backoff_min
        .saturating_mul(factor)
        .min(options.backoff_max);
    let half = ceiling / 2;
    let jitter_nanos = fastrand::u64(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX));
    half + Duration::from_nanos(jitter_nanos)
}

/// What to do on the socket for a command.
enum Online {
    Write(Message),
    Nothing,
    Close(oneshot::Sender<()>),
}

impl Registry {
    fn internal_id(&mut self, kind: &str) -> String {
        self.next_internal_id += 1;
        format!("lhttp-rs-{kind}-{}", self.next_internal_id)
    }

    fn add_pending(&mut self, id: String, pending: Pending) {
        if self.pending.len() >= PENDING_SWEEP {
            self.pending.retain(|_, p| match p {
                Pending::Request(tx) | Pending::Subscribe { answer: tx, .. } => !tx.is_closed(),
                Pending::History(tx) => !tx.is_closed(),
                Pending::Unsubscribe(_) | Pending::Restore { .. } | Pending::Ping => true,
            });
        }
        self.pending.insert(id, pending);
    }

    /// Handles a command while connected.
    fn online(&mut self, command: Command) -> Online {
        match command {
            Command::Send { message, done } => {
                let _ = done.send(Ok(()));
                Online::Write(message)
            }
            Command::Request {
                message,
                id,
                answer,
            } => {
                self.add_pending(id, Pending::Request(answer));
                Online::Write(message)
            }
            Command::Subscribe {
                id,
                channels,
                recent,
                presence_info,
                sink,
                request_id,
                answer,
            } => {
                self.add_listener(id, channels.clone(), sink);
                // Always asked of the server, even when another subscription already holds
                // the channels (subscribing twice is harmless): the answer confirms it.
                let mut message =
                    Message::builder(names::SUBSCRIBE).header(names::SUBSCRIBE, channels.join(" "));
                if let Some(recent) = recent {
                    message = message.header(names::RECENT, recent.to_string());
                }
                if let Some(info) = presence_info {
                    for channel in &channels {
                        self.presence_info.insert(channel.clone(), info.clone());
                    }
                    message = message.header(names::PRESENCE_INFO, info);
                }
                let message = message.header(REQUEST_ID, request_id.clone()).build();
                match message {
                    Ok(message) => {
                        self.add_pending(
                            request_id,
                            Pending::Subscribe {
                                listener: id,
                                answer,
                            },
                        );
                        Online::Write(message)
                    }
                    Err(e) => {
                        self.remove_listener(id, None);
                        let _ = answer.send(Err(e.into()));
                        Online::Nothing
                    }
                }
            }
            Command::Unsubscribe { id, answer } => match self.remove_listener(id, answer) {
                Some(frame) => Online::Write(frame),
                None => Online::Nothing,
            },
            Command::History {
                message,
                id,
                answer,
            } => {
                self.add_pending(id, Pending::History(answer));
                Online::Write(message)
            }
            Command::Listen { id, sink } => {
                self.listeners.insert(id, Listener::new(Vec::new(), sink));
                self.incoming.push(id);
                Online::Nothing
            }
            Command::Join {
                id,
                worker,
                request_id,
                answer,
            } => match worker.join_message(&request_id) {
                Ok(message) => {
                    self.by_queue
                        .insert((worker.channel.clone(), worker.group.clone()), id);
                    self.workers.insert(id, worker);
                    self.add_pending(
                        request_id,
                        Pending::Subscribe {
                            listener: id,
                            answer,
                        },
                    );
                    Online::Write(message)
                }
                Err(e) => {
                    let _ = answer.send(Err(e));
                    Online::Nothing
                }
            },
            Command::Close { done } => Online::Close(done),
        }
    }

    /// Handles a command while disconnected: nothing can be sent.
    fn offline(&mut self, command: Command) {
        match command {
            Command::Send { done, .. } => {
                let _ = done.send(Err(Error::NotConnected));
            }
            Command::Request { answer, .. }
            | Command::Subscribe { answer, .. }
            | Command::Join { answer, .. } => {
                let _ = answer.send(Err(Error::NotConnected));
            }
            Command::History { answer, .. } => {
                let _ = answer.send(Err(Error::NotConnected));
            }
            Command::Unsubscribe { id, answer } => {
                // The server forgot every subscription with the connection.
                self.remove_listener(id, None);
                if let Some(answer) = answer {
                    let _ = answer.send(Ok(()));
                }
            }
            Command::Listen { id, sink } => {
                self.listeners.insert(id, Listener::new(Vec::new(), sink));
                self.incoming.push(id);
            }
            Command::Close { done } => {
                let _ = done.send(());
            }
        }
    }

    fn add_listener(&mut self, id: ListenerId, channels: Vec<String>, sink: Sink) {
        for channel in &channels {
            let ids = self.by_channel.entry(channel.clone()).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        self.listeners.insert(id, Listener::new(channels, sink));
        self.refresh_patterns();
    }

    /// Recomputes `patterns` from the subscribed channels.
    fn refresh_patterns(&mut self) {
        self.patterns = self
            .by_channel
            .keys()
            .filter(|name| name.contains(['*', '>']))
            .filter_map(|name| Pattern::parse(name).ok().map(|p| (name.clone(), p)))
            .collect();
    }

    /// Forgets listener `id`. Returns the `unsubscribe` frame for the channels no other
    /// listener holds; `answer` is told when the server confirmed (at once if there is
    /// nothing to tell the server).
    fn remove_listener(
        &mut self,
        id: ListenerId,
        answer: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Option<Message> {
        if let Some(worker) = self.workers.remove(&id) {
            return self.leave_group(worker, answer);
        }
        let mut last = Vec::new();
        if let Some(listener) = self.listeners.remove(&id) {
            self.incoming.retain(|i| *i != id);
            for channel in listener.channels {
                if let Some(ids) = self.by_channel.get_mut(&channel) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.by_channel.remove(&channel);
                        self.presence_info.remove(&channel);
                        self.refresh_patterns();
                        last.push(channel);
                    }
                }
            }
        }
        if last.is_empty() {
            if let Some(answer) = answer {
                let _ = answer.send(Ok(()));
            }
            return None;
        }
        self.unsubscribe_frame(last.join(" "), None, answer)
    }

    /// The `unsubscribe` frame for `channels` (of queue group `group`, if given), registered
    /// so that `answer` hears the server's confirmation.
    fn unsubscribe_frame(
        &mut self,
        channels: String,
        group: Option<String>,
        answer: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Option<Message> {
        let request_id = self.internal_id("unsub");
        let mut message = Message::builder(names::UNSUBSCRIBE).header(names::UNSUBSCRIBE, channels);
        if let Some(group) = group {
            message = message.header(QUEUE, group);
        }
        match message.header(REQUEST_ID, request_id.clone()).build() {
            Ok(message) => {
                self.add_pending(request_id, Pending::Unsubscribe(answer));
                Some(message)
            }
            Err(e) => {
                if let Some(answer) = answer {
                    let _ = answer.send(Err(e.into()));
                }
                None
            }
        }
    }

    /// Leaves a queue group on the server (harmless if a drain already took it out).
    fn leave_group(
        &mut self,
        worker: Worker,
        answer: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Option<Message> {
        self.by_queue
            .remove(&(worker.channel.clone(), worker.group.clone()));
        self.unsubscribe_frame(worker.channel, Some(worker.group), answer)
    }

    /// `subscribe` messages for every channel held and every queue group joined, registered
    /// as pending restores. A channel whose subscriptions have a position asks for what came
    /// after it (the earliest, when they differ); the others are subscribed in batches.
    fn restore_messages(&mut self) -> Vec<Message> {
        let mut channels = Vec::new();
        let mut frames = Vec::new();
        let positioned: Vec<(String, Option<Position>)> = self
            .by_channel
            .iter()
            .filter_map(
                |(channel, ids)| match self.earliest_position(channel, ids) {
                    Some(position) => Some((channel.clone(), Some(position))),
                    // A presence info is one per message: such channels go one by one.
                    None if self.presence_info.contains_key(channel) => {
                        Some((channel.clone(), None))
                    }
                    None => {
                        channels.push(channel.clone());
                        None
                    }
                },
            )
            .collect();
        for (channel, since) in positioned {
            let request_id = self.internal_id("restore");
            let mut message = Message::builder(names::SUBSCRIBE);
            if let Some(info) = self.presence_info.get(&channel) {
                message = message.header(names::PRESENCE_INFO, info.clone());
            }
            message = message.header(names::SUBSCRIBE, channel);
            if let Some(since) = &since {
                message = message
                    .header(names::SINCE, since.offset.to_string())
                    .header(names::EPOCH, since.epoch.clone());
            }
            let message = message.header(REQUEST_ID, request_id.clone()).build();
            match message {
                Ok(message) => {
                    let pending = Pending::Restore { since };
                    self.add_pending(request_id.clone(), pending);
                    self.restoring.insert(request_id);
                    frames.push(message);
                }
                Err(e) => tracing::warn!(error = %e, "cannot restore a subscription"),
            }
        }
        let ids: Vec<ListenerId> = self.workers.keys().copied().collect();
        for id in ids {
            let request_id = self.internal_id("restore");
            match self.workers[&id].join_message(&request_id) {
                Ok(message) => {
                    self.add_pending(request_id.clone(), Pending::Restore { since: None });
                    self.restoring.insert(request_id);
                    frames.push(message);
                }
                Err(e) => tracing::warn!(error = %e, "cannot rejoin a queue group"),
            }
        }
        for batch in channels.chunks(RESTORE_BATCH) {
            let request_id = self.internal_id("restore");
            let message = Message::builder(names::SUBSCRIBE)
                .header(names::SUBSCRIBE, batch.join(" "))
                .header(REQUEST_ID, request_id.clone())
                .build();
            match message {
                Ok(message) => {
                    self.add_pending(request_id.clone(), Pending::Restore { since: None });
                    self.restoring.insert(request_id);
                    frames.push(message);
                }
                Err(e) => tracing::warn!(error = %e, "cannot restore subscriptions"),
            }
        }
        frames
    }

    /// The earliest position the listeners `ids` have in `channel`, if any has one.
    fn earliest_position(&self, channel: &str, ids: &[ListenerId]) -> Option<Position> {
        ids.iter()
            .filter_map(|id| self.listeners.get(id)?.positions.get(channel))
            .min_by_key(|position| position.offset)
            .cloned()
    }

    /// Routes a received message: a delivery to the subscriptions of its channel, an answer to
    /// its request, anything else to the `Incoming` streams.
    fn dispatch(&mut self, message: Message) {
        if let Some(reading) = &mut self.reading {
            if message.header(PUBLISH) == Some(reading.history.channel.as_str()) {
                reading.history.messages.push(message);
                reading.remaining -= 1;
                if reading.remaining == 0 {
                    if let Some(done) = self.reading.take() {
                        let _ = done.answer.send(Ok(done.history));
                    }
                }
                return;
            }
        }
        if message.command() == UNSUBSCRIBED && message.header(PUBLISH).is_none() {
            // Then on to the `Incoming` streams, so the application hears of it.
            self.forget_ended(&message);
        }
        if let (Some(channel), Some(group)) = (message.header(PUBLISH), message.header(QUEUE)) {
            let key = (channel.to_owned(), group.to_owned());
            if let Some(worker) = self.by_queue.get(&key).and_then(|id| self.workers.get(id)) {
                worker.sink.deliver(&message);
                return;
            }
        }
        if let Some(channel) = message.header(PUBLISH) {
            let position = history::position_headers(&message);
            if self.patterns.is_empty() {
                let Some(ids) = self.by_channel.get(channel) else {
                    tracing::trace!(channel, "delivery for a channel no longer subscribed");
                    return;
                };
                // A full buffer drops (and counts); a closed one belongs to a subscription
                // whose drop notice is on its way and will deregister it.
                for id in ids {
                    if let Some(listener) = self.listeners.get_mut(id) {
                        if listener.is_new(channel, position) {
                            listener.sink.deliver(&message);
                        }
                    }
                }
                return;
            }
            let exact = self.by_channel.get(channel).into_iter().flatten();
            let by_pattern = self
                .patterns
                .iter()
                .filter(|(_, pattern)| pattern.matches(channel))
                .filter_map(|(name, _)| self.by_channel.get(name))
                .flatten();
            let mut ids: Vec<ListenerId> = exact.chain(by_pattern).copied().collect();
            if ids.is_empty() {
                tracing::trace!(channel, "delivery for a channel no longer subscribed");
                return;
            }
            // A listener of a channel and of a pattern that matches it is one listener: the
            // server's copies (one per subscription) each reach it once.
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                if let Some(listener) = self.listeners.get_mut(&id) {
                    if listener.is_new(channel, position) {
                        listener.sink.deliver(&message);
                    }
                }
            }
            return;
        }
        if let Some(pending) = message
            .header(REQUEST_ID)
            .and_then(|id| self.pending.remove(id))
        {
            self.answer(pending, message);
            return;
        }
        for id in &self.incoming {
            if let Some(listener) = self.listeners.get(id) {
                listener.sink.deliver(&message);
            }
        }
    }

    /// The server ended a subscription or a queue-group membership (the connection's new token
    /// no longer allows it): its subscriptions stop receiving that channel, a worker's stream
    /// ends, and a reconnection does not ask for it again.
    fn forget_ended(&mut self, notice: &Message) {
        let Some(channel) = notice.header("channel") else {
            return;
        };
        match notice.header(QUEUE) {
            Some(group) => {
                if let Some(id) = self
                    .by_queue
                    .remove(&(channel.to_owned(), group.to_owned()))
                {
                    self.workers.remove(&id);
                }
            }
            None => {
                let removed = self.by_channel.remove(channel).unwrap_or_default();
                self.refresh_patterns();
                for id in removed {
                    if let Some(listener) = self.listeners.get_mut(&id) {
                        listener.channels.retain(|c| c != channel);
                    }
                }
            }
        }
    }

    fn answer(&mut self, pending: Pending, message: Message) {
        match pending {
            Pending::Request(answer) => {
                let _ = answer.send(Ok(message));
            }
            Pending::Subscribe { listener, answer } => {
                if message.command() == SUBSCRIBED {
                    if let (Some(answered), Some(listener)) =
                        (Answer::of(&message), self.listeners.get_mut(&listener))
                    {
                        listener.caught_up(&answered);
                    }
                }
                if message.command() == names::command::ERROR {
                    // The server refused the whole message: nothing changed there, so the
                    // listener goes without an unsubscribe.
                    if let Some(worker) = self.workers.remove(&listener) {
                        self.by_queue.remove(&(worker.channel, worker.group));
                    }
                    if let Some(removed) = self.listeners.remove(&listener) {
                        for channel in removed.channels {
                            if let Some(ids) = self.by_channel.get_mut(&channel) {
                                ids.retain(|i| *i != listener);
                                if ids.is_empty() {
                                    self.by_channel.remove(&channel);
                                    self.refresh_patterns();
                                }
                            }
                        }
                    }
                }
                let _ = answer.send(Ok(message));
            }
            Pending::Unsubscribe(answer) => {
                if let Some(answer) = answer {
                    let _ = answer.send(Error::check_answer(message).map(drop));
                }
            }
            Pending::Restore { since } => {
                if let Some(id) = message.header(REQUEST_ID) {
                    self.restoring.remove(id);
                }
                if message.command() == SUBSCRIBED {
                    self.restored(&message, since);
                }
                if message.command() == names::command::ERROR {
                    tracing::warn!(
                        status = message.header(names::STATUS),
                        reason = message.header(names::REASON),
                        "the server refused to restore subscriptions"
                    );
                }
            }
            Pending::History(answer) => self.history_answer(message, answer),
            Pending::Ping => {}
        }
    }

    /// The `subscribed` answer to a restore: every subscription of the channel continues from
    /// where the answer says, and hears of a gap when the server could not send all that came
    /// after `since`.
    fn restored(&mut self, message: &Message, since: Option<Position>) {
        let Some(answered) = Answer::of(message) else {
            return;
        };
        let lost = answered.recovered == Some(false);
        let Some(ids) = self.by_channel.get(answered.channel) else {
            return;
        };
        for id in ids {
            let Some(listener) = self.listeners.get_mut(id) else {
                continue;
            };
            listener.caught_up(&answered);
            if let (true, Some(last)) = (lost, &since) {
                listener.sink.gap(Gap {
                    channel: answered.channel.to_owned(),
                    last: last.clone(),
                    epoch: answered.epoch.map(str::to_owned),
                    offset: answered.offset,
                });
            }
        }
        if lost {
            tracing::info!(
                channel = answered.channel,
                "messages published while disconnected are no longer kept"
            );
        }
    }

    /// The answer to a `history` read: done when no message follows, else collected from the
    /// messages that do.
    fn history_answer(
        &mut self,
        message: Message,
        answer: oneshot::Sender<Result<History, Error>>,
    ) {
        let answered = match message.command() {
            HISTORY => Answer::of(&message),
            _ => None,
        };
        let Some(answered) = answered else {
            let result = Error::check_answer(message).and_then(|other| {
                Err(Error::Server {
                    status: 0,
                    reason: format!("unexpected answer {:?} to a history read", other.command()),
                    message: Box::new(other),
                })
            });
            let _ = answer.send(result);
            return;
        };
        let remaining = answered.count;
        let history = History {
            channel: answered.channel.to_owned(),
            messages: Vec::with_capacity(remaining.min(4096)),
            epoch: answered.epoch.map(str::to_owned),
            offset: answered.offset,
            recovered: answered.recovered,
        };
        match remaining {
            0 => {
                let _ = answer.send(Ok(history));
            }
            _ => {
                self.reading = Some(Reading {
                    remaining,
                    history,
                    answer,
                });
            }
        }
    }

    /// Fails every pending request; after a lost connection no answer can come.
    fn fail_pending(&mut self, error: impl Fn() -> Error) {
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::Request(answer) | Pending::Subscribe { answer, .. } => {
                    let _ = answer.send(Err(error()));
                }
                Pending::History(answer) => {
                    let _ = answer.send(Err(error()));
                }
                Pending::Unsubscribe(Some(answer)) => {
                    // The server dropped the subscription with the connection.
                    let _ = answer.send(Ok(()));
                }
                Pending::Unsubscribe(None) | Pending::Restore { .. } | Pending::Ping => {}
            }
        }
        if let Some(reading) = self.reading.take() {
            let _ = reading.answer.send(Err(error()));
        }
        self.restoring.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarting_server_s_retry_hint_is_read_from_its_close_reason() {
        let hint = |code, reason| retry_hint(Some(code), reason);
        assert_eq!(
            hint(1012, "server restarting; retry in 1750 ms"),
            Some(Duration::from_millis(1750))
        );
        assert_eq!(hint(1001, "server shutting down; retry in 5 ms"), None);
        assert_eq!(hint(1012, "server restarting"), None);
        assert_eq!(hint(1012, "retry in soon ms"), None);
        assert_eq!(retry_hint(None, "retry in 5 ms"), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_within_bounds() {
        let options = Options {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..Options::default()
        };
        for attempt in 0..40 {
            let ceiling =
                Duration::from_millis(100 * 2u64.pow(attempt.min(10))).min(Duration::from_secs(1));
            let delay = backoff(&options, attempt);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "attempt {attempt}: {delay:?}"
            );
        }
    }
}
