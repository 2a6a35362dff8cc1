//! The connection task: owns the connection (a [`Link`], whatever its transport), matches
//! answers to requests, fans deliveries out to subscriptions, and reconnects.
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

use lhttp_proto::{Limits, Message};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    ConnectionState, Error,
    client::Options,
    transport::{self, Endpoint, Link, Received, WriteError},
};

pub(crate) use lhttp_proto::names::REQUEST_ID;
use lhttp_proto::names::{self, PUBLISH, QUEUE, command::UNSUBSCRIBED};

/// Channels per `subscribe` message when restoring after a reconnect, so that one message
/// stays far below the server's size limit (256 channels of 256 bytes would be 64 KiB).
const RESTORE_BATCH: usize = 64;

/// Once this many requests are pending, answers whose caller gave up are swept away.
const PENDING_SWEEP: usize = 256;

/// Identifies one [`crate::Subscription`] or [`crate::Incoming`] inside a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ListenerId(pub(crate) u64);

/// The sending end of a subscription's bounded buffer.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) tx: mpsc::Sender<Message>,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Queues `message`; when the buffer is full, drops it and counts.
    fn deliver(&self, message: &Message) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(message.clone()) {
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
        sink: Sink,
        request_id: String,
        answer: oneshot::Sender<Result<Message, Error>>,
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
    /// Restoring subscriptions after a reconnect.
    Restore,
}

struct Listener {
    /// Empty for an [`crate::Incoming`].
    channels: Vec<String>,
    sink: Sink,
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
    incoming: Vec<ListenerId>,
    /// Queue-group memberships, and the listener of each (channel, group).
    workers: HashMap<ListenerId, Worker>,
    by_queue: HashMap<(String, String), ListenerId>,
    pending: HashMap<String, Pending>,
    /// Restore requests not yet answered; `Connected` is announced when it empties.
    restoring: HashSet<String>,
    next_internal_id: u64,
}

/// How a connected session ended.
enum End {
    /// Closed on purpose: stop, then tell the closer (if any) once the state says so.
    Closed(Option<oneshot::Sender<()>>),
    /// The connection broke or the server closed it.
    Lost,
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
    let closer = loop {
        let link = match first.take() {
            Some(link) => link,
            None => {
                match reconnect(
                    &endpoint,
                    &options,
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
            End::Lost if reconnects => {
                tracing::info!(url, "connection lost; reconnecting");
                state.send_replace(ConnectionState::Disconnected);
            }
            End::Lost => {
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
            return End::Lost;
        }
    }
    if registry.restoring.is_empty() {
        state.send_if_modified(|s| replace(s, ConnectionState::Connected));
    }
    // Keepalive: a ping every interval. Where the server answers pings, a connection silent
    // for two intervals is dead (a half-open TCP connection would otherwise look alive
    // forever); where it does not (streams), the transport finds a dead path itself.
    let ping_every = options.ping_interval.unwrap_or(Duration::from_secs(3600));
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let silence_kills = link.pings_are_answered();
    loop {
        tokio::select! {
            _ = pings.tick(), if options.ping_interval.is_some() => {
                if silence_kills && last_heard.elapsed() > ping_every * 2 {
                    tracing::debug!("no answer to pings; the connection is dead");
                    return End::Lost;
                }
                if !ping(&mut link, write_timeout).await {
                    return End::Lost;
                }
            }
            received = link.next() => {
                last_heard = tokio::time::Instant::now();
                let data = match received {
                    Received::Message(data) => data,
                    Received::Alive => {
                        // With pings off, answering keeps the server's idle timeout away.
                        if options.ping_interval.is_none()
                            && link.should_answer_heartbeat()
                            && !ping(&mut link, write_timeout).await
                        {
                            return End::Lost;
                        }
                        continue;
                    }
                    Received::Closed { code, reason } => {
                        tracing::debug!(?code, reason, "server closed the connection");
                        return End::Lost;
                    }
                    Received::Ended(reason) => {
                        tracing::debug!(?reason, "connection ended");
                        return End::Lost;
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
                            return End::Lost;
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
                        return End::Lost;
                    }
                }
            }
        }
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

/// Waits with jittered exponential backoff and reconnects; handles commands meanwhile.
/// `Err` when the client is closed, with the closer to tell once closed.
async fn reconnect(
    endpoint: &Endpoint,
    options: &Options,
    registry: &mut Registry,
    commands: &mut mpsc::Receiver<Command>,
    drops: &mut mpsc::UnboundedReceiver<ListenerId>,
) -> Result<Link, Option<oneshot::Sender<()>>> {
    let mut attempt: u32 = 0;
    loop {
        let delay = backoff(options, attempt);
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
                Pending::Unsubscribe(_) | Pending::Restore => true,
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
                sink,
                request_id,
                answer,
            } => {
                self.add_listener(id, channels.clone(), sink);
                // Always asked of the server, even when another subscription already holds
                // the channels (subscribing twice is harmless): the answer confirms it.
                let message = Message::builder(names::SUBSCRIBE)
                    .header(names::SUBSCRIBE, channels.join(" "))
                    .header(REQUEST_ID, request_id.clone())
                    .build();
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
            Command::Listen { id, sink } => {
                self.listeners.insert(
                    id,
                    Listener {
                        channels: Vec::new(),
                        sink,
                    },
                );
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
            Command::Unsubscribe { id, answer } => {
                // The server forgot every subscription with the connection.
                self.remove_listener(id, None);
                if let Some(answer) = answer {
                    let _ = answer.send(Ok(()));
                }
            }
            Command::Listen { id, sink } => {
                self.listeners.insert(
                    id,
                    Listener {
                        channels: Vec::new(),
                        sink,
                    },
                );
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
        self.listeners.insert(id, Listener { channels, sink });
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
    /// as pending restores.
    fn restore_messages(&mut self) -> Vec<Message> {
        let channels: Vec<String> = self.by_channel.keys().cloned().collect();
        let mut frames = Vec::new();
        let ids: Vec<ListenerId> = self.workers.keys().copied().collect();
        for id in ids {
            let request_id = self.internal_id("restore");
            match self.workers[&id].join_message(&request_id) {
                Ok(message) => {
                    self.add_pending(request_id.clone(), Pending::Restore);
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
                    self.add_pending(request_id.clone(), Pending::Restore);
                    self.restoring.insert(request_id);
                    frames.push(message);
                }
                Err(e) => tracing::warn!(error = %e, "cannot restore subscriptions"),
            }
        }
        frames
    }

    /// Routes a received message: a delivery to the subscriptions of its channel, an answer to
    /// its request, anything else to the `Incoming` streams.
    fn dispatch(&mut self, message: Message) {
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
            let Some(ids) = self.by_channel.get(channel) else {
                tracing::trace!(channel, "delivery for a channel no longer subscribed");
                return;
            };
            // A full buffer drops (and counts); a closed one belongs to a subscription whose
            // drop notice is on its way and will deregister it.
            for id in ids {
                if let Some(listener) = self.listeners.get(id) {
                    listener.sink.deliver(&message);
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
                for id in self.by_channel.remove(channel).unwrap_or_default() {
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
            Pending::Restore => {
                if let Some(id) = message.header(REQUEST_ID) {
                    self.restoring.remove(id);
                }
                if message.command() == names::command::ERROR {
                    tracing::warn!(
                        status = message.header(names::STATUS),
                        reason = message.header(names::REASON),
                        "the server refused to restore subscriptions"
                    );
                }
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
                Pending::Unsubscribe(Some(answer)) => {
                    // The server dropped the subscription with the connection.
                    let _ = answer.send(Ok(()));
                }
                Pending::Unsubscribe(None) | Pending::Restore => {}
            }
        }
        self.restoring.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
