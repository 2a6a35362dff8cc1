//! Queue groups: work queues on a channel, where each message goes to exactly one member.
//!
//! A connection joins group `g` of channel `c` with `subscribe:c` and `queue:g`, and says how
//! many messages it takes at once with `credit:N` (default 1). Each message published to `c`
//! goes to one member with free credit (round robin among them), carrying a `delivery-id`; the
//! member acknowledges it with `ack:<delivery-id>`, which frees the credit. Ordinary
//! subscribers of `c` still get their own copy.
//!
//! Guarantees (see docs/protocol.md, "Guarantees"):
//! - A member never holds more unacknowledged messages than its credit.
//! - While no member has credit, messages wait in a bounded queue (`queues.max_queued`): a
//!   request until its own timeout (then 503 if the group had no member, 504 otherwise; see
//!   [`crate::request`]), a plain message for at most `queues.max_wait_ms` (then it is dropped
//!   and counted). A request the queue cannot take is answered 503 at once.
//! - A member that leaves with unacknowledged messages: those that asked for at-least-once
//!   delivery (`delivery:at-least-once`) go to another member; a request that did not ask gets
//!   502; other messages are lost and counted.
//! - `drain`: a member takes no new work, and leaves once it has acknowledged what it holds.
//!
//! One mutex per group guards its members and its waiting queue; it is never held across an
//! `.await`, and delivery only pushes into bounded outboxes.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use lhttp_proto::{Message, Text};
use tokio::time::Instant;

use crate::{
    Channel, Rejection, ServerHandle,
    builtin::names,
    config::QueuesConfig,
    connection::ConnectionId,
    metrics::{Metrics, add},
    outbox::{Outbox, frame},
    publish::encode_for_channel_with,
    request::{Requests, is_inbox},
};

/// A message given to a group, until a member acknowledges it.
struct Job {
    message: Message,
    /// The request's reply address, when the message is a request.
    reply_to: Option<String>,
    at_least_once: bool,
    /// Past this instant, a waiting job is not delivered any more.
    expires: Instant,
}

/// One connection in a group.
struct Member {
    connection: ConnectionId,
    outbox: Outbox,
    credit: usize,
    /// Delivered and not yet acknowledged, by delivery id.
    held: HashMap<u64, Job>,
    /// Set by `drain`: no new work; leave when `held` is empty. Holds the drain's request-id.
    draining: Option<Option<Text>>,
    /// Its outbox refused a delivery: it is being disconnected, give it nothing more.
    broken: bool,
}

impl Member {
    fn has_credit(&self) -> bool {
        !self.broken && self.draining.is_none() && self.held.len() < self.credit
    }
}

#[derive(Default)]
struct GroupState {
    members: Vec<Member>,
    waiting: VecDeque<Job>,
    /// Where the round robin starts looking for a member with credit.
    next: usize,
}

/// One queue group of one channel.
pub(crate) struct QueueGroup {
    channel: Channel,
    name: Box<str>,
    /// Declared by configuration (a gateway route): kept without members, so that requests
    /// wait for a worker to (re)connect.
    declared: bool,
    state: Mutex<GroupState>,
}

impl QueueGroup {
    /// Members now.
    pub(crate) fn member_count(&self) -> usize {
        self.state.lock().expect("group lock").members.len()
    }

    /// The group's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The channel it serves.
    pub(crate) fn channel(&self) -> &str {
        self.channel.as_str()
    }

    /// The channel it serves, as a checked name.
    pub(crate) fn channel_name(&self) -> &Channel {
        &self.channel
    }

    /// True while `connection` is a member.
    pub(crate) fn has_member(&self, connection: ConnectionId) -> bool {
        self.state
            .lock()
            .expect("group lock")
            .members
            .iter()
            .any(|m| m.connection == connection)
    }
}

/// What a group did with an offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// A member has it.
    Delivered,
    /// It waits for a member with credit.
    Queued,
    /// The waiting queue is full.
    Refused,
}

/// Every queue group of this node, by channel.
pub(crate) struct Queues {
    groups: DashMap<Channel, Vec<Arc<QueueGroup>>>,
    /// Set when the first group is created and never cleared: until then the publish path
    /// skips the table with one atomic load (`DashMap::is_empty` read-locks every shard).
    ever_used: std::sync::atomic::AtomicBool,
    config: QueuesConfig,
    next_delivery: AtomicU64,
}

/// The context a group needs to act: where requests are answered, and the counters.
pub(crate) struct Env<'a> {
    pub(crate) server: &'a ServerHandle,
    pub(crate) requests: &'a Requests,
    pub(crate) metrics: &'a Metrics,
}

impl<'a> Env<'a> {
    pub(crate) fn of(server: &'a ServerHandle) -> Self {
        let shared = server.shared();
        Env {
            server,
            requests: &shared.requests,
            metrics: &shared.metrics,
        }
    }
}

impl Queues {
    pub(crate) fn new(config: QueuesConfig) -> Self {
        Queues {
            groups: DashMap::new(),
            ever_used: std::sync::atomic::AtomicBool::new(false),
            config,
            next_delivery: AtomicU64::new(1),
        }
    }

    /// True when no group was ever created (the publish path then skips the lookup).
    pub(crate) fn is_empty(&self) -> bool {
        !self.ever_used.load(Ordering::Relaxed)
    }

    /// Members over all groups.
    pub(crate) fn member_count(&self) -> usize {
        self.groups
            .iter()
            .map(|e| e.value().iter().map(|g| g.member_count()).sum::<usize>())
            .sum()
    }

    /// Number of groups over all channels.
    pub(crate) fn group_count(&self) -> usize {
        self.groups.iter().map(|e| e.value().len()).sum()
    }

    /// The group `name` of `channel`, created if needed.
    fn group(&self, channel: &Channel, name: &str, declared: bool) -> Arc<QueueGroup> {
        self.ever_used.store(true, Ordering::Relaxed);
        let mut groups = self.groups.entry(channel.clone()).or_default();
        if let Some(group) = groups.iter().find(|g| &*g.name == name) {
            return group.clone();
        }
        let group = Arc::new(QueueGroup {
            channel: channel.clone(),
            name: name.into(),
            declared,
            state: Mutex::new(GroupState::default()),
        });
        groups.push(group.clone());
        group
    }

    /// Creates a group that lives without members (for a gateway route).
    pub(crate) fn declare(&self, channel: &Channel, name: &str) -> Arc<QueueGroup> {
        self.group(channel, name, true)
    }

    /// Adds `connection` to group `name` of `channel` with `credit`, or changes its credit if
    /// it is a member already; hands it waiting work.
    pub(crate) fn join(
        &self,
        channel: &Channel,
        name: &str,
        credit: usize,
        connection: ConnectionId,
        outbox: &Outbox,
        env: &Env<'_>,
    ) -> Arc<QueueGroup> {
        let group = self.group(channel, name, false);
        let mut state = group.state.lock().expect("group lock");
        match state
            .members
            .iter_mut()
            .find(|m| m.connection == connection)
        {
            Some(member) => member.credit = credit,
            None => state.members.push(Member {
                connection,
                outbox: outbox.clone(),
                credit,
                held: HashMap::new(),
                draining: None,
                broken: false,
            }),
        }
        self.pump(&group, &mut state, env);
        drop(state);
        env.server.queue_interest_changed(&group);
        group
    }

    /// Removes `connection` from `group`; what it held is handed on, failed or lost (see the
    /// module documentation).
    pub(crate) fn leave(&self, group: &Arc<QueueGroup>, connection: ConnectionId, env: &Env<'_>) {
        let mut state = group.state.lock().expect("group lock");
        let Some(i) = state
            .members
            .iter()
            .position(|m| m.connection == connection)
        else {
            return;
        };
        let member = state.members.remove(i);
        let mut held: Vec<(u64, Job)> = member.held.into_iter().collect();
        // Back to the front of the queue in the order they were delivered.
        held.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, job) in held {
            let live_request = job
                .reply_to
                .as_deref()
                .map(|address| env.requests.may_be_pending(address));
            match (job.at_least_once, live_request) {
                // Answered already: nothing to do again.
                (_, Some(false)) => {}
                (true, _) => {
                    add(&env.metrics.queue_redeliveries, 1);
                    if let Some(address) = &job.reply_to {
                        env.requests
                            .set_waiting(address, Some(Arc::downgrade(group)));
                    }
                    state.waiting.push_front(job);
                }
                (false, Some(true)) => {
                    let address = job.reply_to.as_deref().expect("a request");
                    let rejection = Rejection::new(
                        502,
                        "the worker handling the request disconnected before answering",
                    );
                    if env.requests.is_local(address) {
                        env.requests.fail(address, &rejection, env.metrics);
                    } else {
                        // The requester is on another node: the error travels as the answer.
                        let _ = env.server.publish_to(address, &rejection.to_message(None));
                    }
                }
                (false, None) => add(&env.metrics.queue_lost, 1),
            }
        }
        self.pump(group, &mut state, env);
        drop(state);
        self.after_member_gone(group, env);
    }

    /// Drops a group without members or waiting work (unless declared).
    fn remove_if_unused(&self, group: &Arc<QueueGroup>) {
        let unused = |g: &QueueGroup| {
            let state = g.state.lock().expect("group lock");
            state.members.is_empty() && state.waiting.is_empty() && !g.declared
        };
        if let Some(mut groups) = self.groups.get_mut(&group.channel) {
            groups.retain(|g| !(Arc::ptr_eq(g, group) && unused(g)));
        }
        self.groups
            .remove_if(&group.channel, |_, groups| groups.is_empty());
    }

    /// A group left without members keeps its waiting work for a member that comes back; once
    /// the longest wait has passed, what is left has expired and the group can go.
    fn reap_later(&self, group: Arc<QueueGroup>, env: &Env<'_>) {
        let wait = Duration::from_millis(self.config.max_wait_ms);
        let server = env.server.clone();
        let group = Arc::downgrade(&group);
        tokio::spawn(async move {
            tokio::time::sleep(wait + Duration::from_millis(10)).await;
            let Some(group) = group.upgrade() else {
                return;
            };
            let env = Env::of(&server);
            let queues = &server.shared().queues;
            let (empty, idle) = {
                let mut state = group.state.lock().expect("group lock");
                expire_waiting(&mut state, &env);
                (state.members.is_empty(), state.waiting.is_empty())
            };
            match (empty, idle) {
                (true, true) => queues.remove_if_unused(&group),
                // Work arrived again with nobody to take it: look again later.
                (true, false) => queues.reap_later(group, &env),
                (false, _) => {}
            }
        });
    }

    /// Offers `message`, published to `channel`, to each group of the channel; returns how
    /// many took it (delivered or queued) and how many refused it (queue full).
    pub(crate) fn offer(&self, channel: &str, message: &Message, env: &Env<'_>) -> (usize, usize) {
        let groups: Vec<Arc<QueueGroup>> = match self.groups.get(channel) {
            Some(groups) => groups.clone(),
            None => return (0, 0),
        };
        let (mut taken, mut refused) = (0, 0);
        for group in groups {
            match self.offer_job(&group, message, env) {
                Offer::Refused => refused += 1,
                Offer::Delivered | Offer::Queued => taken += 1,
            }
        }
        (taken, refused)
    }

    /// Offers `message` to group `name` of `channel` only (in a cluster, NATS picked this node
    /// for it). Refused when the group does not exist here (its last member just left).
    pub(crate) fn offer_to_group(
        &self,
        channel: &str,
        name: &str,
        message: &Message,
        env: &Env<'_>,
    ) -> Offer {
        let group = self
            .groups
            .get(channel)
            .and_then(|groups| groups.iter().find(|g| &*g.name == name).cloned());
        match group {
            Some(group) => self.offer_job(&group, message, env),
            None => Offer::Refused,
        }
    }

    /// Members of group `name` of `channel` on this node.
    pub(crate) fn local_members(&self, channel: &str, name: &str) -> usize {
        self.groups.get(channel).map_or(0, |groups| {
            groups
                .iter()
                .find(|g| &*g.name == name)
                .map_or(0, |g| g.member_count())
        })
    }

    fn offer_job(&self, group: &Arc<QueueGroup>, message: &Message, env: &Env<'_>) -> Offer {
        let reply_to = message
            .header(names::REPLY_TO)
            .filter(|address| is_inbox(address))
            .map(str::to_owned);
        let job = Job {
            message: message.clone(),
            reply_to,
            at_least_once: wants_at_least_once(message),
            expires: Instant::now() + Duration::from_millis(self.config.max_wait_ms),
        };
        self.offer_to(group, job, env)
    }

    fn offer_to(&self, group: &Arc<QueueGroup>, job: Job, env: &Env<'_>) -> Offer {
        let mut state = group.state.lock().expect("group lock");
        let mut job = job;
        if state.waiting.is_empty() {
            match self.deliver(group, &mut state, job, env) {
                None => return Offer::Delivered,
                Some(back) => job = back,
            }
        }
        expire_waiting(&mut state, env);
        if state.waiting.len() >= self.config.max_queued {
            add(&env.metrics.queue_refused, 1);
            return Offer::Refused;
        }
        if let Some(address) = &job.reply_to {
            env.requests
                .set_waiting(address, Some(Arc::downgrade(group)));
        }
        state.waiting.push_back(job);
        Offer::Queued
    }

    /// Gives `job` to the next member with credit, or gives it back when none has any (`Some`).
    fn deliver(
        &self,
        group: &QueueGroup,
        state: &mut GroupState,
        job: Job,
        env: &Env<'_>,
    ) -> Option<Job> {
        let count = state.members.len();
        for step in 0..count {
            let i = (state.next + step) % count;
            if !state.members[i].has_credit() {
                continue;
            }
            let id = self.next_delivery.fetch_add(1, Ordering::Relaxed);
            let bytes = delivery_bytes(&job.message, group, id);
            let member = &mut state.members[i];
            if member.outbox.push(frame(bytes)).is_err() {
                member.broken = true;
                continue;
            }
            if let Some(address) = &job.reply_to {
                env.requests.set_waiting(address, None);
            }
            member.held.insert(id, job);
            state.next = i + 1;
            add(&env.metrics.queue_deliveries, 1);
            return None;
        }
        Some(job)
    }

    /// Hands waiting work to members with credit, oldest first.
    fn pump(&self, group: &QueueGroup, state: &mut GroupState, env: &Env<'_>) {
        expire_waiting(state, env);
        while let Some(job) = state.waiting.pop_front() {
            if let Some(address) = &job.reply_to {
                if !env.requests.may_be_pending(address) {
                    continue;
                }
            }
            if let Some(job) = self.deliver(group, state, job, env) {
                state.waiting.push_front(job);
                break;
            }
        }
        // A draining member that holds nothing has finished.
        let mut i = 0;
        while i < state.members.len() {
            let member = &state.members[i];
            if member.draining.is_some() && member.held.is_empty() {
                let member = state.members.remove(i);
                let request_id = member.draining.flatten();
                let _ = member
                    .outbox
                    .push(frame(drained_message(group, request_id).to_bytes()));
            } else {
                i += 1;
            }
        }
    }

    /// Acknowledges delivery `id` held by `connection` in `group`; false when it holds no such
    /// delivery.
    pub(crate) fn ack(
        &self,
        group: &Arc<QueueGroup>,
        connection: ConnectionId,
        id: u64,
        env: &Env<'_>,
    ) -> bool {
        let mut state = group.state.lock().expect("group lock");
        let Some(member) = state
            .members
            .iter_mut()
            .find(|m| m.connection == connection)
        else {
            return false;
        };
        if member.held.remove(&id).is_none() {
            return false;
        }
        add(&env.metrics.queue_acks, 1);
        self.pump(group, &mut state, env);
        let gone = !state.members.iter().any(|m| m.connection == connection);
        drop(state);
        if gone {
            self.after_member_gone(group, env);
        }
        true
    }

    /// Starts draining `connection` in `group`: it gets no new work, and `drained` (with
    /// `request_id`) once it holds nothing. Returns true when it then left the group.
    pub(crate) fn drain(
        &self,
        group: &Arc<QueueGroup>,
        connection: ConnectionId,
        request_id: Option<Text>,
        env: &Env<'_>,
    ) -> bool {
        let mut state = group.state.lock().expect("group lock");
        if let Some(member) = state
            .members
            .iter_mut()
            .find(|m| m.connection == connection)
        {
            member.draining = Some(request_id);
        }
        self.pump(group, &mut state, env);
        let gone = !state.members.iter().any(|m| m.connection == connection);
        drop(state);
        if gone {
            self.after_member_gone(group, env);
        }
        gone
    }

    fn after_member_gone(&self, group: &Arc<QueueGroup>, env: &Env<'_>) {
        env.server.queue_interest_changed(group);
        let (empty, waiting) = {
            let state = group.state.lock().expect("group lock");
            (state.members.is_empty(), !state.waiting.is_empty())
        };
        if empty && !group.declared {
            if waiting {
                self.reap_later(group.clone(), env);
            } else {
                self.remove_if_unused(group);
            }
        }
    }
}

/// Drops finished work from the front of the waiting queue: plain messages past
/// `queues.max_wait_ms`, and requests that already had their terminal answer (their own timer
/// answers them 503/504 at their deadline; see [`crate::request`]).
fn expire_waiting(state: &mut GroupState, env: &Env<'_>) {
    let now = Instant::now();
    while let Some(job) = state.waiting.front() {
        // A request of this node ends with its own timer; one of another node (in a cluster)
        // cannot be checked from here and waits at most `max_wait_ms`, as a plain message.
        let done = match &job.reply_to {
            Some(address) if env.requests.is_local(address) => !env.requests.is_pending(address),
            _ => job.expires <= now,
        };
        if !done {
            break;
        }
        if job.reply_to.is_none() {
            add(&env.metrics.queue_expired, 1);
        }
        state.waiting.pop_front();
    }
}

/// The bytes a member receives: the published copy (whose own `queue` and `delivery-id`
/// headers, if a publisher sent any, are stripped), plus the real ones.
fn delivery_bytes(message: &Message, group: &QueueGroup, id: u64) -> bytes::Bytes {
    let id = id.to_string();
    encode_for_channel_with(
        message,
        group.channel.as_str(),
        &[(names::QUEUE, &group.name), (names::DELIVERY_ID, &id)],
    )
}

/// What a member gets when its drain is complete.
fn drained_message(group: &QueueGroup, request_id: Option<Text>) -> Message {
    let mut builder = Message::builder("drained")
        .header("channel", group.channel.as_str().to_owned())
        .header(names::QUEUE, group.name.to_string());
    if let Some(id) = request_id {
        builder = builder.header(names::REQUEST_ID, id);
    }
    builder
        .build()
        .expect("channel and group names are valid header values")
}

/// Group names: 1 to 128 letters, digits, `.`, `_` or `-`.
pub(crate) fn is_valid_group(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True when the message asks to be handed to another member if its member leaves without
/// acknowledging it.
pub(crate) fn wants_at_least_once(message: &Message) -> bool {
    message
        .header(names::DELIVERY)
        .is_some_and(|v| v.eq_ignore_ascii_case("at-least-once"))
}
