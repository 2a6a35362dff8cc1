//! [`Connection`]: one client as processors and filters see it, and [`ConnectionHandle`] to
//! reach it from other tasks.

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use crate::transport::Peer;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Extensions;
use lhttp_proto::{Message, names, pattern::Pattern};

use crate::{
    Channel, Rejection, ServerHandle, User,
    broker::Broker,
    pubsub::channel::is_pattern,
    pubsub::history::Want,
    pubsub::presence::{self, Member},
    requests::inbox::Inbox,
    requests::queue::{Env, QueueGroup, is_valid_group},
    security::permissions::{self, Grants},
    session::sessions::Sessions,
    transport::outbox::{Outbox, SendError, frame},
};

/// The command of the message that tells a client the server ended one of its subscriptions.
const UNSUBSCRIBED: &str = "unsubscribed";

pub use crate::transport::ConnectionId;

/// One client, on any transport.
///
/// Owned by the task that reads the client's messages; processors and filters get `&mut`
/// access while they run, so per-connection state needs no lock.
pub struct Connection {
    id: ConnectionId,
    peer: Peer,
    /// Application data attached by processors and filters, one value per type.
    extensions: Extensions,
    /// The channels this connection is subscribed to. It is the source of truth that makes
    /// subscribing idempotent and lets a disconnect remove every subscription from the hub.
    subscriptions: HashSet<Channel>,
    /// The wildcard patterns this connection is subscribed to, as written.
    patterns: HashSet<Box<str>>,
    outbox: Outbox,
    server: ServerHandle,
    /// Upstream calls in flight, created at the first call so idle connections pay nothing.
    upstream_slots: Option<Arc<Semaphore>>,
    /// The private address answers come back to, opened at the first request.
    inbox: Option<Arc<Inbox>>,
    /// Queue groups this connection is a member of.
    groups: Vec<Arc<QueueGroup>>,
    /// The authenticated user; boxed so an anonymous connection pays one pointer.
    user: Option<Box<User>>,
    /// What this connection may subscribe and publish to; `None`: anything (no rules), so an
    /// unrestricted node never matches patterns. Sessions by every anonymous connection.
    grants: Option<Arc<Grants>>,
    /// The `Security::rules_generation` that `grants` were given under.
    rules_generation: u64,
    /// The random id presence lists show for this connection, made when first needed.
    client_id: Option<Box<str>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("subscriptions", &self.subscriptions.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(id: ConnectionId, peer: Peer, outbox: Outbox, server: ServerHandle) -> Self {
        Connection {
            id,
            peer,
            extensions: Extensions::new(),
            subscriptions: HashSet::new(),
            patterns: HashSet::new(),
            outbox,
            server,
            upstream_slots: None,
            inbox: None,
            groups: Vec::new(),
            user: None,
            grants: None,
            rules_generation: 0,
            client_id: None,
        }
    }

    /// The id presence shows for this connection: 16 random hexadecimal digits, so that it
    /// tells nothing about the server (no count, no order) and cannot be guessed.
    pub(crate) fn client_id(&mut self) -> &str {
        let (directory, id, outbox) = (&self.server.sessions().directory, self.id, &self.outbox);
        self.client_id.get_or_insert_with(|| {
            let random = getrandom::u64().expect("the operating system's random generator");
            let client: Box<str> = format!("{random:016x}").into();
            directory.add_client(&client, id, outbox);
            client
        })
    }

    /// Takes this connection out of the [`Directory`](crate::session::directory::Directory),
    /// as it closes.
    pub(crate) fn leave_directory(&mut self) {
        let directory = &self.server.sessions().directory;
        if let Some(user) = &self.user {
            directory.remove_user(user.id(), self.id);
        }
        if let Some(client) = &self.client_id {
            directory.remove_client(client);
        }
    }

    /// This connection as a member of a presence room, with `info`.
    fn member(&mut self, info: &str) -> Member {
        Member {
            client: self.client_id().into(),
            user: self.user.as_ref().map_or("", |u| u.id()).into(),
            info: info.into(),
            node: None,
        }
    }

    /// Called after the subscription to `channel` was added to the hub.
    fn joined(&mut self, channel: &str, info: &str) {
        let broker = self.server.sessions().broker.clone();
        if broker.presence.is_some() {
            broker.joined(channel, || self.member(info));
        }
    }

    /// Called after the subscription to `channel` was removed from the hub.
    fn left(&self, channel: &str) {
        if let Some(client) = &self.client_id {
            self.broker().left(channel, client);
        }
    }

    /// This connection's inbox, opened now if it has none yet.
    pub(crate) fn inbox(&mut self) -> Arc<Inbox> {
        let shared = self.server.sessions();
        let max = shared.config().requests.max_pending_per_inbox;
        let outbox = &self.outbox;
        self.inbox
            .get_or_insert_with(|| shared.broker.requests.open_inbox(Some(outbox.clone()), max))
            .clone()
    }

    /// Joins queue group `group` of each of `channels` (or changes its credit there). Checked
    /// whole before anything changes, like [`Connection::subscribe`].
    pub(crate) fn join_queue(
        &mut self,
        channels: &[&str],
        group: &str,
        credit: usize,
    ) -> Result<(), Rejection> {
        if !is_valid_group(group) {
            return Err(Rejection::bad_request(
                "queue group names are 1 to 128 letters, digits, '.', '_' or '-'",
            ));
        }
        if channels.iter().any(|c| crate::requests::inbox::is_inbox(c)) {
            return Err(Rejection::forbidden("an inbox cannot have a queue group"));
        }
        let channels = channels
            .iter()
            .map(|name| Channel::new(name))
            .collect::<Result<Vec<_>, _>>()?;
        for channel in &channels {
            self.sessions()
                .gateway
                .check_subscribe(channel.as_str(), Some(group))?;
        }
        // Taking work from a channel is reading it: the subscribe rules apply.
        if let Some(grants) = &self.grants {
            permissions::check_subscribe(grants, channels.iter().map(Channel::as_str))
                .inspect_err(|_| self.count_denial())?;
        }
        let max = self.sessions().config().limits.max_subscriptions;
        if self.subscriptions.len() + self.groups.len() + channels.len() > max {
            return Err(Rejection::limited(format!(
                "subscription limit of {max} channels per connection reached"
            )));
        }
        let broker = self.broker().clone();
        let env = Env::of(&*broker);
        for channel in channels {
            let joined = broker
                .queues
                .join(&channel, group, credit, self.id, &self.outbox, &env);
            if !self.groups.iter().any(|g| Arc::ptr_eq(g, &joined)) {
                self.groups.push(joined);
            }
        }
        Ok(())
    }

    /// Leaves queue group `group` of `channel`, or every group of `channel` when `group` is
    /// `None`.
    pub(crate) fn leave_queue(&mut self, channel: &str, group: Option<&str>) {
        let broker = self.broker().clone();
        let env = Env::of(&*broker);
        self.groups.retain(|g| {
            let matches = g.channel() == channel && group.is_none_or(|name| g.name() == name);
            if matches {
                broker.queues.leave(g, self.id, &env);
            }
            !matches
        });
    }

    /// Acknowledges queue-group deliveries; 400 for an id this connection does not hold.
    pub(crate) fn ack(&mut self, ids: &[u64]) -> Result<(), Rejection> {
        let broker = self.broker().clone();
        let env = Env::of(&*broker);
        let queues = &broker.queues;
        let mut unknown = 0;
        for &id in ids {
            if !self.groups.iter().any(|g| queues.ack(g, self.id, id, &env)) {
                unknown += 1;
            }
        }
        self.forget_left_groups();
        if unknown > 0 {
            return Err(Rejection::bad_request(format!(
                "{unknown} acknowledged delivery id(s) are not held by this connection"
            )));
        }
        Ok(())
    }

    /// Starts draining this connection's membership of `group` on each of `channels`.
    pub(crate) fn drain(
        &mut self,
        channels: &[&str],
        group: &str,
        request_id: Option<&lhttp_proto::Text>,
    ) -> Result<(), Rejection> {
        let broker = self.broker().clone();
        let env = Env::of(&*broker);
        let targets: Vec<Arc<QueueGroup>> = self
            .groups
            .iter()
            .filter(|g| g.name() == group && channels.contains(&g.channel()))
            .cloned()
            .collect();
        if targets.len() != channels.len() {
            return Err(Rejection::bad_request(
                "drain names a channel and queue group this connection is not a member of",
            ));
        }
        for g in &targets {
            broker.queues.drain(g, self.id, request_id.cloned(), &env);
        }
        self.forget_left_groups();
        Ok(())
    }

    /// Drops groups that removed this connection themselves (a finished drain).
    fn forget_left_groups(&mut self) {
        let id = self.id;
        self.groups.retain(|g| g.has_member(id));
    }

    /// Takes the rules in force when they were replaced (a reload) since this connection's
    /// grants were given: the same identity gets the new grants, and loses any subscription
    /// they no longer allow. One atomic load when nothing changed.
    pub(crate) fn follow_rules(&mut self) {
        let security = &self.sessions().security;
        if security.rules_generation.load(Ordering::Acquire) != self.rules_generation {
            let user = self.user.take().map(|user| *user);
            self.set_user(user);
        }
    }

    /// Sets who this connection is (`None`: anonymous) and what it may do, and drops any
    /// subscription the new identity may not hold, so nothing keeps flowing to a connection
    /// that lost the right to it.
    pub(crate) fn set_user(&mut self, user: Option<User>) {
        let security = &self.server.sessions().security;
        let generation = security.rules_generation.load(Ordering::Acquire);
        let grants = security
            .permissions
            .load()
            .grants_of(user.as_ref(), &self.peer);
        self.rules_generation = generation;
        self.grants = grants;
        let directory = &self.server.sessions().directory;
        if let Some(old) = &self.user {
            directory.remove_user(old.id(), self.id);
        }
        if let Some(user) = &user {
            directory.add_user(user.id(), self.id, &self.outbox);
        }
        self.user = user.map(Box::new);
        let Some(grants) = self.grants.clone() else {
            return;
        };
        let lost: Vec<Channel> = self
            .subscriptions
            .iter()
            .filter(|c| !grants.may_subscribe(c.as_str()))
            .cloned()
            .collect();
        for channel in lost {
            self.unsubscribe(channel.as_str());
            self.tell_unsubscribed(channel.as_str(), None);
        }
        let lost: Vec<Box<str>> = self
            .patterns
            .iter()
            .filter(|p| {
                Pattern::parse(p).map_or(true, |pattern| !grants.may_subscribe_pattern(&pattern))
            })
            .cloned()
            .collect();
        for pattern in lost {
            self.unsubscribe(&pattern);
            self.tell_unsubscribed(&pattern, None);
        }
        // Taking a group's work is reading its channel: a membership the new rights do not
        // cover ends too (what the member holds is handed on as when it leaves).
        let lost: Vec<(Channel, Box<str>)> = self
            .groups
            .iter()
            .filter(|g| !grants.may_subscribe(g.channel()))
            .map(|g| (g.channel_name().clone(), g.name().into()))
            .collect();
        for (channel, group) in lost {
            self.leave_queue(channel.as_str(), Some(&group));
            self.tell_unsubscribed(channel.as_str(), Some(&group));
        }
    }

    /// Tells the client that the server ended its subscription to `channel` (or its membership
    /// of `group` there) because its rights no longer cover it.
    fn tell_unsubscribed(&self, channel: &str, group: Option<&str>) {
        let mut builder = Message::builder(UNSUBSCRIBED).header("channel", channel.to_owned());
        if let Some(group) = group {
            builder = builder.header(lhttp_proto::names::QUEUE, group.to_owned());
        }
        let notice = builder
            .header("reason", "not allowed by the connection's new token")
            .build()
            .expect("channel and group names are valid header values");
        let _ = self.outbox.push(frame(notice.to_bytes()));
    }

    /// The authenticated user, or `None` for an anonymous connection.
    ///
    /// A client that authenticates with the `auth` message does so after the open hooks ran:
    /// `on_open` sees `None` then; the user is set before the next message is handled.
    pub fn user(&self) -> Option<&User> {
        self.user.as_deref()
    }

    /// True when the channel rules let this connection subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.grants
            .as_ref()
            .is_none_or(|g| g.may_subscribe(channel))
    }

    /// True when the channel rules let this connection publish to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.grants.as_ref().is_none_or(|g| g.may_publish(channel))
    }

    /// Refuses (403) the whole list when the rules deny any channel of it, or when it names a
    /// channel only the HTTP gateway publishes to.
    pub(crate) fn check_publish<'a>(
        &self,
        channels: impl Iterator<Item = &'a str>,
    ) -> Result<(), Rejection> {
        let gateway = &self.sessions().gateway;
        match (&self.grants, gateway.has_channels()) {
            (None, false) => Ok(()),
            (None, true) => gateway.check_publish(channels),
            (Some(grants), _) => channels.into_iter().try_for_each(|channel| {
                gateway.check_publish(std::iter::once(channel))?;
                permissions::check_publish(grants, std::iter::once(channel))
                    .inspect_err(|_| self.count_denial())
            }),
        }
    }

    fn count_denial(&self) {
        crate::metrics::add(&self.sessions().metrics.permission_denials, 1);
    }

    /// A slot for one more upstream call, or `None` when `max` are in flight.
    pub(crate) fn upstream_slot(&mut self, max: usize) -> Option<OwnedSemaphorePermit> {
        self.upstream_slots
            .get_or_insert_with(|| Arc::new(Semaphore::new(max)))
            .clone()
            .try_acquire_owned()
            .ok()
    }

    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The client's address, for a client over TCP (WebSocket, or a byte stream over TCP or
    /// TLS); `None` for a Unix-socket or in-process client.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.addr()
    }

    /// Who the client is: its address, or its credentials on a Unix socket.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Data attached to this connection (one value per type).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Data attached to this connection, to change it.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// The server, to publish or read its state.
    pub fn server(&self) -> &ServerHandle {
        &self.server
    }

    /// What this server's sessions share.
    pub(crate) fn sessions(&self) -> &Sessions {
        self.server.sessions()
    }

    /// Where this connection's publishes and subscriptions go.
    pub(crate) fn broker(&self) -> &Arc<Broker> {
        &self.server.sessions().broker
    }

    /// Queues `message` for this client without waiting.
    pub fn send(&self, message: &Message) -> Result<(), SendError> {
        self.outbox.push(frame(message.to_bytes()))
    }

    /// A handle that can send to this client from any task, after this call returns.
    pub fn handle(&self) -> ConnectionHandle {
        ConnectionHandle {
            id: self.id,
            outbox: self.outbox.clone(),
        }
    }

    /// The channels and wildcard patterns this connection is subscribed to.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subscriptions
            .iter()
            .map(Channel::as_str)
            .chain(self.patterns.iter().map(|p| &**p))
    }

    /// True when subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.subscriptions.contains(channel)
    }

    /// Subscribes to every channel in `channels`, or to none of them: names, the channel rules
    /// (403) and the subscription limit are checked before anything changes. Already subscribed channels are
    /// left as they are, so subscribing twice delivers once.
    pub fn subscribe<'a>(
        &mut self,
        channels: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Rejection> {
        self.subscribe_with_info(channels, "")
    }

    /// [`Connection::subscribe`], with the `info` presence lists show for this connection on
    /// the new subscriptions to channels with presence.
    pub(crate) fn subscribe_with_info<'a>(
        &mut self,
        channels: impl IntoIterator<Item = &'a str>,
        info: &str,
    ) -> Result<(), Rejection> {
        let mut new = Vec::new();
        let mut new_patterns: Vec<(&str, Pattern)> = Vec::new();
        for name in channels {
            if is_pattern(name) {
                if !self.patterns.contains(name) && !new_patterns.iter().any(|(n, _)| *n == name) {
                    let pattern = Pattern::parse(name)
                        .map_err(|e| Rejection::bad_request(format!("pattern {name}: {e}")))?;
                    new_patterns.push((name, pattern));
                }
                continue;
            }
            if crate::requests::inbox::is_inbox(name) {
                return Err(Rejection::forbidden(
                    "inboxes cannot be subscribed: they deliver to their owner only",
                ));
            }
            if !self.subscriptions.contains(name)
                && !new.iter().any(|c: &Channel| c.as_str() == name)
            {
                self.sessions().gateway.check_subscribe(name, None)?;
                new.push(Channel::new(name)?);
            }
        }
        if let Some(grants) = &self.grants {
            permissions::check_subscribe(grants, new.iter().map(Channel::as_str))
                .inspect_err(|_| self.count_denial())?;
            if let Some((name, _)) = new_patterns
                .iter()
                .find(|(_, p)| !grants.may_subscribe_pattern(p))
            {
                self.count_denial();
                return Err(Rejection::forbidden(format!(
                    "not allowed to subscribe to every channel pattern {name} matches"
                )));
            }
        }
        let limits = &self.sessions().config().limits;
        let max = limits.max_subscriptions;
        if self.subscriptions.len() + self.patterns.len() + new.len() + new_patterns.len() > max {
            return Err(Rejection::limited(format!(
                "subscription limit of {max} channels per connection reached"
            )));
        }
        let max_patterns = limits.max_patterns_per_connection;
        if self.patterns.len() + new_patterns.len() > max_patterns {
            return Err(Rejection::limited(format!(
                "limit of {max_patterns} wildcard patterns per connection reached"
            )));
        }
        let server_max = limits.max_patterns;
        let broker = self.server.sessions().broker.clone();
        if !broker.presence_has_room(new.iter().map(Channel::as_str)) {
            return Err(Rejection::unavailable(
                "the server lists as many presence members as it may",
            ));
        }
        for (name, pattern) in new_patterns {
            let first = broker
                .hub
                .subscribe_pattern(name, pattern, self.id, &self.outbox, server_max)
                .map_err(|_| {
                    Rejection::unavailable("the server holds as many wildcard patterns as it may")
                })?;
            if first {
                broker.pattern_interest_changed(name);
            }
            self.patterns.insert(name.into());
        }
        for channel in new {
            if broker.hub.subscribe(&channel, self.id, &self.outbox) {
                broker.interest_changed(&channel);
            }
            self.joined(channel.as_str(), info);
            self.subscriptions.insert(channel);
        }
        Ok(())
    }

    /// Subscribes to `channel` (checked as [`Connection::subscribe`] checks) and queues the
    /// `subscribed` answer and the history `want` asks for, atomically with the channel's
    /// publishes. Already subscribed: only the answer and the history are queued.
    pub(crate) fn subscribe_catching_up(
        &mut self,
        channel: &str,
        want: &Want,
        request_id: Option<&str>,
        info: &str,
    ) -> Result<(), Rejection> {
        let subscribed = self.subscriptions.contains(channel);
        if !subscribed {
            // The same checks, and the same errors, as a plain subscribe.
            self.check_new_subscription(channel)?;
        }
        let channel = Channel::new(channel)?;
        let broker = self.server.sessions().broker.clone();
        let subscriber = (!subscribed).then_some((self.id, &self.outbox));
        let queued = broker.catch_up(
            &channel,
            want,
            names::command::SUBSCRIBED,
            request_id,
            subscriber,
            &self.outbox,
        );
        // An error means the connection is ending (slow consumer, or closed); its
        // subscriptions go with it.
        if let Ok(true) = queued {
            broker.interest_changed(&channel);
        }
        if !subscribed {
            self.joined(channel.as_str(), info);
            self.subscriptions.insert(channel);
        }
        Ok(())
    }

    /// Queues the `presence` answer for `channel`: its member count and at most `limit` of
    /// its members. Needs the right to subscribe to the channel.
    pub(crate) fn read_presence(
        &mut self,
        channel: &str,
        limit: usize,
        request_id: Option<&str>,
    ) -> Result<(), Rejection> {
        let channel = Channel::new(channel)?;
        if let Some(grants) = &self.grants {
            permissions::check_subscribe(grants, std::iter::once(channel.as_str()))
                .inspect_err(|_| self.count_denial())?;
        }
        let broker = self.server.sessions().broker.clone();
        let presence = broker
            .presence
            .as_ref()
            .filter(|p| p.rule(channel.as_str()).is_some())
            .ok_or_else(|| Rejection::not_found("this channel has no presence"))?;
        let listing = presence.list(channel.as_str(), limit);
        let answer = presence::answer(channel.as_str(), &listing, self.client_id(), request_id);
        // A full queue ends the connection as a slow consumer: nothing more to answer.
        let _ = self.send(&answer);
        Ok(())
    }

    /// Queues the `history` answer and the history of `channel` that `want` asks for; the
    /// connection needs the right to subscribe to it.
    pub(crate) fn read_history(
        &mut self,
        channel: &str,
        want: &Want,
        request_id: Option<&str>,
    ) -> Result<(), Rejection> {
        let channel = Channel::new(channel)?;
        if crate::requests::inbox::is_inbox(channel.as_str()) {
            return Err(Rejection::forbidden("inboxes keep no history"));
        }
        if let Some(grants) = &self.grants {
            permissions::check_subscribe(grants, std::iter::once(channel.as_str()))
                .inspect_err(|_| self.count_denial())?;
        }
        let broker = &self.server.sessions().broker;
        // A full queue ends the connection as a slow consumer: nothing more to answer.
        let _ = broker.catch_up(
            &channel,
            want,
            names::command::HISTORY,
            request_id,
            None,
            &self.outbox,
        );
        Ok(())
    }

    /// The checks a new subscription to `name` passes: not an inbox, not a gateway channel,
    /// allowed by the rules, within `max_subscriptions`.
    fn check_new_subscription(&self, name: &str) -> Result<(), Rejection> {
        if crate::requests::inbox::is_inbox(name) {
            return Err(Rejection::forbidden(
                "inboxes cannot be subscribed: they deliver to their owner only",
            ));
        }
        self.sessions().gateway.check_subscribe(name, None)?;
        if let Some(grants) = &self.grants {
            permissions::check_subscribe(grants, std::iter::once(name))
                .inspect_err(|_| self.count_denial())?;
        }
        let max = self.sessions().config().limits.max_subscriptions;
        if self.subscriptions.len() + 1 > max {
            return Err(Rejection::limited(format!(
                "subscription limit of {max} channels per connection reached"
            )));
        }
        if !self.broker().presence_has_room(std::iter::once(name)) {
            return Err(Rejection::unavailable(
                "the server lists as many presence members as it may",
            ));
        }
        Ok(())
    }

    /// Unsubscribes from `channel` (or wildcard pattern); one never subscribed is ignored.
    pub fn unsubscribe(&mut self, channel: &str) {
        if self.patterns.remove(channel) {
            if self.broker().hub.unsubscribe_pattern(channel, self.id) {
                self.broker().pattern_interest_changed(channel);
            }
            return;
        }
        if let Some(channel) = self.subscriptions.take(channel) {
            let last = self.broker().hub.unsubscribe(channel.as_str(), self.id);
            self.broker().unsubscribed(&channel, self.id, last);
            self.left(channel.as_str());
        }
    }

    /// Removes every subscription.
    pub fn unsubscribe_all(&mut self) {
        let broker = &self.server.sessions().broker;
        for pattern in self.patterns.drain() {
            if broker.hub.unsubscribe_pattern(&pattern, self.id) {
                broker.pattern_interest_changed(&pattern);
            }
        }
        let subscriptions = std::mem::take(&mut self.subscriptions);
        for channel in subscriptions {
            let last = broker.hub.unsubscribe(channel.as_str(), self.id);
            broker.unsubscribed(&channel, self.id, last);
            self.left(channel.as_str());
        }
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Sends an `error` message; failures to queue are the connection's end anyway.
    pub(crate) fn send_rejection(
        &self,
        rejection: &Rejection,
        request_id: Option<&lhttp_proto::Text>,
    ) {
        crate::metrics::add(&self.sessions().metrics.error_replies, 1);
        let _ = self.send(&rejection.to_message(request_id));
    }
}

/// A drop guard: however the session ends (even by a panic in a processor), the hub keeps no
/// subscription of a connection that no longer exists, its queue-group work is handed on, and
/// its requests end with it.
impl Drop for Connection {
    fn drop(&mut self) {
        self.unsubscribe_all();
        let broker = self.broker().clone();
        let env = Env::of(&*broker);
        for group in self.groups.drain(..) {
            broker.queues.leave(&group, self.id, &env);
        }
        if let Some(inbox) = self.inbox.take() {
            broker.requests.close_inbox(&inbox);
        }
    }
}

/// Sends to one connection from any task. Sending to a connection that has ended fails with
/// [`SendError::Closed`]; holding a handle does not keep the connection open.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    id: ConnectionId,
    outbox: Outbox,
}

impl ConnectionHandle {
    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Queues `message` for the client without waiting.
    pub fn send(&self, message: &Message) -> Result<(), SendError> {
        self.outbox.push(frame(message.to_bytes()))
    }
}
