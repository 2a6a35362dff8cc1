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
//!   [`crate::requests::inbox`]), a plain message for at most `queues.max_wait_ms` (then it is dropped
//!   and counted). A request the queue cannot take is answered 503 at once.
//! - A member that leaves with unacknowledged messages: those that asked for at-least-once
//!   delivery (`delivery:at-least-once`) go to another member; a request that did not ask gets
//!   502; other messages are lost and counted.
//! - `drain`: a member takes no new work, and leaves once it has acknowledged what it holds.
//! - Memory: every job, waiting or held by a member, is charged to its publisher ([`Budget`]):
//!   at most `queues.max_queued_bytes_per_publisher` per publisher (429 beyond it) and
//!   `queues.max_queued_bytes` over the server (503 beyond it). Held jobs count too: members
//!   may be an attacker's connections that never acknowledge, and credit × members × groups
//!   is no bound worth having.
//! - Expiry runs on its own clock: a group with waiting work has one timer task, armed for the
//!   earliest deadline, that ends when nothing waits.
//!
//! One mutex per group guards its members and its waiting queue; it is never held across an
//! `.await`, and delivery only pushes into bounded outboxes.

use lhttp_proto::names;
use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use lhttp_proto::{Message, Text};
use tokio::time::Instant;

use crate::{
    Channel, Rejection,
    config::QueuesConfig,
    metrics::{Metrics, add},
    pubsub::publish::encode_for_channel_with,
    requests::inbox::{Requests, is_inbox},
    transport::ConnectionId,
    transport::outbox::{Outbox, frame},
};

/// Who published a piece of queue-group work: whose share of
/// `queues.max_queued_bytes_per_publisher` it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Publisher {
    /// A client connection (WebSocket or any other transport).
    Connection(ConnectionId),
    /// An HTTP gateway client, by address (IPv6 by /64 network, as connections per address).
    Address(IpAddr),
    /// `POST /publish` and [`ServerHandle::publish`](crate::ServerHandle::publish): trusted publishers (loopback or API key
    /// holders, and the embedding code), one shared account.
    Http,
    /// Work other cluster nodes sent this node's groups through NATS. Its publishers are not
    /// known here, so it has no share of its own (one would let one of them refuse everyone's
    /// work): only the server's budget bounds it.
    Cluster,
}

impl Publisher {
    /// The account of an HTTP client at `ip`: one per IPv4 address, one per IPv6 /64 network
    /// (the block one subscriber usually gets; single addresses would give one host 2^64
    /// accounts).
    pub(crate) fn address(ip: IpAddr) -> Self {
        let key = match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            },
        };
        Publisher::Address(key)
    }
}

/// Why a group could not take a message, and so what its publisher is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The group's waiting queue holds `queues.max_queued` messages: 503.
    GroupFull,
    /// The group does not exist on this node (its last member just left): 503.
    NoGroup,
    /// The publisher holds `queues.max_queued_bytes_per_publisher` already: 429.
    PublisherShare,
    /// The server holds `queues.max_queued_bytes` already: 503.
    ServerBudget,
}

impl Refusal {
    /// The answer to the publisher.
    pub(crate) fn rejection(self) -> Rejection {
        match self {
            Refusal::GroupFull => Rejection::unavailable("a queue group's waiting queue is full"),
            Refusal::NoGroup => Rejection::unavailable("the queue group is not served here"),
            Refusal::PublisherShare => Rejection::limited(
                "your messages waiting in queue groups are over your share: wait for workers to take them",
            ),
            Refusal::ServerBudget => {
                Rejection::unavailable("the server holds as much queued work as it may")
            }
        }
    }

    /// The worse of two refusals: a publisher is told of the server-wide limit first.
    pub(crate) fn worst(a: Option<Refusal>, b: Refusal) -> Refusal {
        match (a, b) {
            (Some(Refusal::ServerBudget), _) | (_, Refusal::ServerBudget) => Refusal::ServerBudget,
            (Some(Refusal::PublisherShare), _) | (_, Refusal::PublisherShare) => {
                Refusal::PublisherShare
            }
            (Some(Refusal::GroupFull), _) | (_, Refusal::GroupFull) => Refusal::GroupFull,
            _ => Refusal::NoGroup,
        }
    }
}

/// Bytes a job is charged beyond its message's size: the job, its place in a queue or a
/// member's table, the message's header list. Without it a flood of empty messages would be
/// nearly free.
const JOB_OVERHEAD: usize = 256;

/// The bytes one job of `message` is charged.
pub(crate) fn job_size(message: &Message) -> usize {
    message.encoded_len() + JOB_OVERHEAD
}

/// The bytes of queue-group work held now, over the server and per publisher
/// (`queues.max_queued_bytes`, `queues.max_queued_bytes_per_publisher`).
///
/// One mutex: it is taken once per publish that reaches a queue group and once per job that
/// ends, never on plain pub/sub, and never while it takes another lock.
pub(crate) struct Budget {
    max_total: usize,
    max_per_publisher: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    /// Only publishers that hold something: an entry goes when it reaches 0.
    by_publisher: HashMap<Publisher, usize>,
}

impl Budget {
    fn new(config: &QueuesConfig) -> Self {
        Budget {
            max_total: config.max_queued_bytes,
            max_per_publisher: config.max_queued_bytes_per_publisher,
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Nothing panics while holding it; the counts stay consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `bytes` to `publisher`, or says which limit it would pass.
    fn charge(self: &Arc<Self>, publisher: Publisher, bytes: usize) -> Result<Charge, Refusal> {
        let mut held = self.held();
        let own = held.by_publisher.get(&publisher).copied().unwrap_or(0);
        if held.total + bytes > self.max_total {
            return Err(Refusal::ServerBudget);
        }
        if publisher != Publisher::Cluster && own + bytes > self.max_per_publisher {
            return Err(Refusal::PublisherShare);
        }
        held.total += bytes;
        held.by_publisher.insert(publisher, own + bytes);
        drop(held);
        Ok(Charge {
            budget: self.clone(),
            publisher,
            bytes,
        })
    }

    fn release(&self, publisher: Publisher, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut held = self.held();
        held.total = held.total.saturating_sub(bytes);
        if let Some(own) = held.by_publisher.get_mut(&publisher) {
            *own = own.saturating_sub(bytes);
            if *own == 0 {
                held.by_publisher.remove(&publisher);
            }
        }
    }

    /// Bytes held now over the server.
    pub(crate) fn total(&self) -> usize {
        self.held().total
    }
}

/// Bytes charged to a publisher, given back when dropped: a job carries its charge, so every
/// way a job ends (acknowledged, expired, lost with its member, its group gone) releases it.
pub(crate) struct Charge {
    budget: Arc<Budget>,
    publisher: Publisher,
    bytes: usize,
}

impl Charge {
    /// Splits `bytes` off this charge for one job; when it holds less (a group appeared since
    /// it was reserved), charges the publisher again.
    fn take(&mut self, bytes: usize) -> Result<Charge, Refusal> {
        if self.bytes < bytes {
            return self.budget.charge(self.publisher, bytes);
        }
        self.bytes -= bytes;
        Ok(Charge {
            budget: self.budget.clone(),
            publisher: self.publisher,
            bytes,
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.publisher, self.bytes);
    }
}

/// A message given to a group, until a member acknowledges it.
struct Job {
    message: Message,
    /// The request's reply address, when the message is a request.
    reply_to: Option<String>,
    at_least_once: bool,
    /// Past this instant, a waiting job is not delivered any more.
    expires: Instant,
    /// Its bytes, charged to its publisher until the job ends.
    _charge: Charge,
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
    /// When the group's timer task runs next (see [`Queues::sweep`]); `None` while it has
    /// none. Never later than the earliest deadline in `waiting`.
    sweep_at: Option<Instant>,
}

/// One queue group of one channel.
pub(crate) struct QueueGroup {
    channel: Channel,
    name: Box<str>,
    /// Declared by configuration (a gateway route): kept without members, so that requests
    /// wait for a worker to (re)connect.
    declared: bool,
    state: Mutex<GroupState>,
    /// Wakes the timer task when a job with an earlier deadline than `sweep_at` arrives.
    sweep_wake: tokio::sync::Notify,
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
    /// The waiting queue is full, or its publisher's share or the server's budget is.
    Refused,
}

/// What the groups of one channel did with a publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Offered {
    /// Groups that took it (delivered or queued).
    pub(crate) taken: usize,
    /// Why groups refused it, if any did (the worst reason).
    pub(crate) refused: Option<Refusal>,
}

/// Every queue group of this node, by channel.
pub(crate) struct Queues {
    groups: DashMap<Channel, Vec<Arc<QueueGroup>>>,
    /// Set when the first group is created and never cleared: until then the publish path
    /// skips the table with one atomic load (`DashMap::is_empty` read-locks every shard).
    ever_used: std::sync::atomic::AtomicBool,
    config: QueuesConfig,
    next_delivery: AtomicU64,
    /// Bytes held by waiting and delivered work, shared with every job's charge.
    budget: Arc<Budget>,
}

/// What queue groups reach beyond themselves, provided by the broker that routes publishes
/// (a trait, because the broker sits above the groups it routes to).
pub(crate) trait QueueHost: Send + Sync {
    /// Every group of the server.
    fn queues(&self) -> &Queues;
    /// Where requests wait for their answers.
    fn requests(&self) -> &Requests;
    fn metrics(&self) -> &Metrics;
    /// A group gained its first or lost its last local member (a cluster node holds a NATS
    /// queue subscription for a group while it has local members).
    fn queue_interest_changed(&self, group: &QueueGroup);
    /// Answers the request waiting at `address`, which may be on another node.
    fn answer(&self, address: &str, answer: &Message);
    /// An owned handle for a group's expiry timer; `None` once the server is gone.
    fn owned(&self) -> Option<Arc<dyn QueueHost>>;
}

/// The context a group needs to act: its host, where requests are answered, and the counters.
pub(crate) struct Env<'a> {
    pub(crate) host: &'a dyn QueueHost,
    pub(crate) requests: &'a Requests,
    pub(crate) metrics: &'a Metrics,
}

impl<'a> Env<'a> {
    pub(crate) fn of(host: &'a dyn QueueHost) -> Self {
        Env {
            host,
            requests: host.requests(),
            metrics: host.metrics(),
        }
    }
}

impl Queues {
    pub(crate) fn new(config: QueuesConfig) -> Self {
        Queues {
            groups: DashMap::new(),
            ever_used: std::sync::atomic::AtomicBool::new(false),
            budget: Arc::new(Budget::new(&config)),
            config,
            next_delivery: AtomicU64::new(1),
        }
    }

    /// Bytes of queue-group work held now (waiting, or delivered and not acknowledged).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.budget.total()
    }

    /// Charges `publisher` for one job of `message` in every group of `channels` at once, so
    /// that a publish the budget cannot take is refused before anything is delivered. `None`
    /// when no channel has a group.
    pub(crate) fn reserve(
        &self,
        channels: &[&str],
        message: &Message,
        publisher: Publisher,
    ) -> Result<Option<Charge>, Refusal> {
        let jobs: usize = channels
            .iter()
            .map(|channel| self.groups.get(*channel).map_or(0, |groups| groups.len()))
            .sum();
        if jobs == 0 {
            return Ok(None);
        }
        let bytes = job_size(message).saturating_mul(jobs);
        self.budget.charge(publisher, bytes).map(Some)
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
            sweep_wake: tokio::sync::Notify::new(),
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
        env.host.queue_interest_changed(&group);
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
                    let expires = job.expires;
                    state.waiting.push_front(job);
                    self.arm_sweeper(group, &mut state, expires, env);
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
                        env.host.answer(address, &rejection.to_message(None));
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

    /// Offers `message`, published to `channel`, to each group of the channel, each job's
    /// bytes taken from `charge` (see [`Queues::reserve`]) or charged to `publisher` when it
    /// has none left; says how many took it and why others refused it.
    pub(crate) fn offer(
        &self,
        channel: &str,
        message: &Message,
        publisher: Publisher,
        charge: &mut Option<Charge>,
        env: &Env<'_>,
    ) -> Offered {
        let groups: Vec<Arc<QueueGroup>> = match self.groups.get(channel) {
            Some(groups) => groups.clone(),
            None => return Offered::default(),
        };
        let mut offered = Offered::default();
        let bytes = job_size(message);
        for group in groups {
            let job_charge = match charge {
                Some(charge) => charge.take(bytes),
                None => self.budget.charge(publisher, bytes),
            };
            let outcome = match job_charge {
                Ok(job_charge) => self.offer_job(&group, message, job_charge, env),
                Err(refusal) => Err(refusal),
            };
            match outcome {
                Ok(_) => offered.taken += 1,
                Err(refusal) => {
                    if matches!(refusal, Refusal::PublisherShare | Refusal::ServerBudget) {
                        add(&env.metrics.queue_refused_bytes, 1);
                    }
                    offered.refused = Some(Refusal::worst(offered.refused, refusal));
                }
            }
        }
        offered
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
        self.offer_to_group_by(channel, name, message, Publisher::Cluster, env)
            .unwrap_or(Offer::Refused)
    }

    /// [`Queues::offer_to_group`] with the job charged to `publisher` (a gateway route's own
    /// group: [`Publisher::address`] of the HTTP client); says why it was refused, so that the
    /// caller answers 429 ([`Refusal::PublisherShare`]) or 503.
    pub(crate) fn offer_to_group_by(
        &self,
        channel: &str,
        name: &str,
        message: &Message,
        publisher: Publisher,
        env: &Env<'_>,
    ) -> Result<Offer, Refusal> {
        let group = self
            .groups
            .get(channel)
            .and_then(|groups| groups.iter().find(|g| &*g.name == name).cloned());
        let Some(group) = group else {
            return Err(Refusal::NoGroup);
        };
        let charge = self
            .budget
            .charge(publisher, job_size(message))
            .inspect_err(|_| add(&env.metrics.queue_refused_bytes, 1))?;
        self.offer_job(&group, message, charge, env)
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

    fn offer_job(
        &self,
        group: &Arc<QueueGroup>,
        message: &Message,
        charge: Charge,
        env: &Env<'_>,
    ) -> Result<Offer, Refusal> {
        let reply_to = message
            .header(names::REPLY_TO)
            .filter(|address| is_inbox(address))
            .map(str::to_owned);
        // A request of this node waits until its own timeout, when its timer answers it; a
        // second later its job is dropped whatever happened. Other work waits `max_wait_ms`.
        let wait = match &reply_to {
            Some(address) if env.requests.is_local(address) => env
                .requests
                .timeout_for(message.header(names::TIMEOUT))
                .map_or(Duration::from_millis(self.config.max_wait_ms), |timeout| {
                    timeout + REQUEST_GRACE
                }),
            _ => Duration::from_millis(self.config.max_wait_ms),
        };
        let job = Job {
            message: message.clone(),
            reply_to,
            at_least_once: wants_at_least_once(message),
            expires: Instant::now() + wait,
            _charge: charge,
        };
        self.offer_to(group, job, env)
    }

    fn offer_to(&self, group: &Arc<QueueGroup>, job: Job, env: &Env<'_>) -> Result<Offer, Refusal> {
        let mut state = group.state.lock().expect("group lock");
        let mut job = job;
        if state.waiting.is_empty() {
            match self.deliver(group, &mut state, job, env) {
                None => return Ok(Offer::Delivered),
                Some(back) => job = back,
            }
        }
        expire_waiting(&mut state, env);
        if state.waiting.len() >= self.config.max_queued {
            add(&env.metrics.queue_refused, 1);
            return Err(Refusal::GroupFull);
        }
        if let Some(address) = &job.reply_to {
            env.requests
                .set_waiting(address, Some(Arc::downgrade(group)));
        }
        let expires = job.expires;
        state.waiting.push_back(job);
        self.arm_sweeper(group, &mut state, expires, env);
        Ok(Offer::Queued)
    }

    /// Makes the group's timer run by `expires`, the deadline of a job just queued: starts
    /// the timer task if the group has none, wakes it if it would run later.
    fn arm_sweeper(
        &self,
        group: &Arc<QueueGroup>,
        state: &mut GroupState,
        expires: Instant,
        env: &Env<'_>,
    ) {
        match state.sweep_at {
            Some(at) if at <= expires => {}
            Some(_) => {
                state.sweep_at = Some(expires);
                group.sweep_wake.notify_one();
            }
            None => {
                // Outside a runtime (a publish from a plain thread) there is no clock to arm:
                // expiry then happens when the group is next touched, and the next job queued
                // within a runtime arms it.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let Some(host) = env.host.owned() else {
                    return;
                };
                state.sweep_at = Some(expires);
                runtime.spawn(Self::sweep(host, Arc::downgrade(group)));
            }
        }
    }

    /// The expiry timer of one group: sleeps until `sweep_at` (moved earlier, and woken, when
    /// a job with an earlier deadline arrives), drops what has expired, and sleeps until the
    /// earliest deadline left; ends when nothing waits (and removes the group if it has no
    /// member either). One task per group with waiting work, none per message; an idle group
    /// costs nothing.
    async fn sweep(host: Arc<dyn QueueHost>, group: std::sync::Weak<QueueGroup>) {
        loop {
            let Some(group) = group.upgrade() else {
                return;
            };
            let at = group.state.lock().expect("group lock").sweep_at;
            let Some(at) = at else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                // An earlier deadline: look at `sweep_at` again.
                _ = group.sweep_wake.notified() => continue,
            }
            let env = Env::of(&*host);
            let (next, memberless) = {
                let mut state = group.state.lock().expect("group lock");
                let next = expire_all(&mut state, &env);
                state.sweep_at = next.map(|next| next.max(Instant::now() + SWEEP_GRANULARITY));
                (next, state.members.is_empty())
            };
            if next.is_none() {
                if memberless && !group.declared {
                    host.queues().remove_if_unused(&group);
                }
                return;
            }
        }
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
        env.host.queue_interest_changed(group);
        let (empty, waiting) = {
            let state = group.state.lock().expect("group lock");
            (state.members.is_empty(), !state.waiting.is_empty())
        };
        // With work waiting, the group's timer removes it once nothing waits any more.
        if empty && !group.declared && !waiting {
            self.remove_if_unused(group);
        }
    }
}

/// Lateness allowed to a waiting request's timer before the group drops its job anyway.
const REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Shortest time between two runs of a group's expiry timer: deadlines close together are
/// handled in one pass over the queue, so a queue with staggered deadlines costs at most ten
/// passes a second.
const SWEEP_GRANULARITY: Duration = Duration::from_millis(100);

/// Drops every waiting job that is finished (see [`is_finished`]), wherever it is in the
/// queue; returns the earliest deadline of what is left.
fn expire_all(state: &mut GroupState, env: &Env<'_>) -> Option<Instant> {
    let now = Instant::now();
    let mut next: Option<Instant> = None;
    state.waiting.retain(|job| {
        if is_finished(job, now, env) {
            if job.reply_to.is_none() {
                add(&env.metrics.queue_expired, 1);
            }
            return false;
        }
        next = Some(next.map_or(job.expires, |n| n.min(job.expires)));
        true
    });
    next
}

/// True when a waiting job will not be delivered: a plain message (or another node's request)
/// past `max_wait_ms`, or a request of this node that had its terminal answer or is past its
/// timeout (its own timer answers it 503/504; see [`crate::requests::inbox`]).
fn is_finished(job: &Job, now: Instant, env: &Env<'_>) -> bool {
    match &job.reply_to {
        Some(address) if env.requests.is_local(address) => {
            !env.requests.is_pending(address) || job.expires <= now
        }
        _ => job.expires <= now,
    }
}

/// Drops finished work from the front of the waiting queue: plain messages past
/// `queues.max_wait_ms`, and requests that already had their terminal answer (their own timer
/// answers them 503/504 at their deadline; see [`crate::requests::inbox`]).
fn expire_waiting(state: &mut GroupState, env: &Env<'_>) {
    let now = Instant::now();
    // Only the front: this runs on every offer, and a full pass is the timer's job.
    while let Some(job) = state.waiting.front() {
        if !is_finished(job, now, env) {
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

pub(crate) use lhttp_proto::channel::is_valid_group;

/// True when the message asks to be handed to another member if its member leaves without
/// acknowledging it.
pub(crate) fn wants_at_least_once(message: &Message) -> bool {
    message
        .header(names::DELIVERY)
        .is_some_and(|v| v.eq_ignore_ascii_case("at-least-once"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: usize, per: usize) -> Arc<Budget> {
        Arc::new(Budget::new(&QueuesConfig {
            max_queued_bytes: total,
            max_queued_bytes_per_publisher: per,
            ..QueuesConfig::default()
        }))
    }

    #[test]
    fn charges_are_bounded_per_publisher_and_in_all_and_given_back_when_dropped() {
        let budget = budget(250, 100);
        let a = Publisher::Connection(ConnectionId(1));
        let b = Publisher::Connection(ConnectionId(2));
        let first = budget.charge(a, 60).unwrap();
        assert_eq!(budget.charge(a, 60).err(), Some(Refusal::PublisherShare));
        let second = budget.charge(b, 100).unwrap();
        let third = budget.charge(Publisher::Http, 80).unwrap();
        assert_eq!(budget.charge(a, 20).err(), Some(Refusal::ServerBudget));
        drop((second, third));
        // Work from other nodes has no share, only the server's budget.
        let cluster = budget.charge(Publisher::Cluster, 190).unwrap();
        assert_eq!(budget.total(), 250);
        drop(cluster);
        assert_eq!(budget.total(), 60);
        drop(first);
        assert_eq!(budget.total(), 0);
        assert!(
            budget.held().by_publisher.is_empty(),
            "publishers holding nothing leave no entry"
        );
    }

    #[test]
    fn a_reservation_is_split_into_jobs_and_charges_again_when_short() {
        let budget = budget(1000, 500);
        let mut reservation = budget.charge(Publisher::Http, 200).unwrap();
        let jobs: Vec<Charge> = (0..3).map(|_| reservation.take(100).unwrap()).collect();
        // Two came from the reservation, the third was charged on its own.
        assert_eq!(budget.total(), 300);
        drop(reservation);
        assert_eq!(budget.total(), 300);
        drop(jobs);
        assert_eq!(budget.total(), 0);
    }

    #[test]
    fn ipv6_gateway_clients_are_one_account_per_64_network() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Publisher::address(one), Publisher::address(same));
        assert_ne!(Publisher::address(one), Publisher::address(other));
        assert_eq!(
            Publisher::address(mapped),
            Publisher::Address("192.0.2.7".parse().unwrap())
        );
    }
}
