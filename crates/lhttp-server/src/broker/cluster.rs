//! The NATS side of the broker seam: several nodes share channels through a NATS server.
//!
//! A single node has no [`Cluster`] at all (`Broker::cluster` is `None`): publishing is local
//! fan-out through the [`Hub`](crate::Hub) and no NATS code runs. With `[cluster] nats` set:
//!
//! - **Subjects.** Channel `c` is subject `<prefix>.ch.<tokens>`: each `.`-separated token of
//!   `c` with every byte outside `[A-Za-z0-9_-]` written as `~` and two hex digits, and an
//!   empty token as a lone `~` ([`subject_tokens`]). No channel name can act as a NATS
//!   wildcard (`*`, `>`), and the levels are the channel's own, so a wildcard subscription
//!   (`chat.*`) is the NATS subscription of the same pattern (`<prefix>.ch.chat.*`).
//! - **Interest.** A node holds a NATS subscription for a channel only while the channel has
//!   local subscribers. The hub reports when a channel appears or disappears; [`reconcile`]
//!   then compares, under one mutex, "has local subscribers" with "holds a NATS subscription"
//!   and fixes the difference. Because every hub change is followed by a reconcile that reads
//!   the hub's state *then*, the last reconcile always sees the final state, whatever the
//!   interleaving of "last subscriber left" and "first subscriber joined" on other threads.
//! - **Receiving.** One task per subscribed channel reads its NATS subscription and queues the
//!   payload (already the encoded per-channel copy) for the local subscribers through
//!   [`Hub::publish`](crate::Hub); it never publishes back to NATS.
//! - **Publishing.** A publish is delivered locally as on a single node, and the same encoded
//!   bytes are handed to one forwarding task through a bounded queue, which sends them to NATS
//!   with a header naming this node. The connection task never waits on NATS: when NATS is not
//!   connected or the queue is full the message is dropped and counted (at-most-once). The
//!   client is connected with `no_echo`, so NATS does not send a node its own messages, and
//!   the origin header is checked as well, so local subscribers get a message exactly once.
//! - **Faults.** The client retries the initial connection and reconnects forever; it restores
//!   its subscriptions after a reconnect by itself. Local pub/sub never depends on NATS.
//!
//! [`reconcile`]: Cluster::reconcile

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use async_nats::{Client, ConnectOptions, Event, HeaderMap, ServerAddr, connection::State};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    Channel, broker::Broker, config::ClusterConfig, error::ServerError, metrics::add,
    requests::queue::Publisher, transport::outbox::frame,
};

/// NATS header that names the node a message was published on.
pub(crate) const ORIGIN_HEADER: &str = "Lhttp-Origin";

/// Payloads up to this size are sent without looking up the NATS server's `max_payload`
/// (1 MiB by default; operators do not set it below this). Larger ones are checked, because a
/// NATS server closes the connection of a client that exceeds it.
const ALWAYS_FITS: usize = 60 * 1024;

/// Longest pause between two connection attempts to NATS.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Cluster counters, shared with the NATS client's event callback (hence their own `Arc`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    slow_consumers: AtomicU64,
}

/// A message on its way to NATS.
struct Outgoing {
    subject: String,
    payload: Bytes,
    /// For a request: where NATS says "no responders" when no node subscribes the subject.
    reply: Option<String>,
}

/// This node's NATS subscription for one channel.
struct Interest {
    /// Ends the channel's receiving task, which drops (unsubscribes) the NATS subscription.
    stop: CancellationToken,
    /// Set once NATS has confirmed the subscription (a request after the SUB came back).
    live: Arc<AtomicBool>,
}

/// What exists only once the server runs: the client, and where to spawn tasks.
struct Running {
    client: Client,
    /// JetStream through `client`, for channel history.
    jetstream: async_nats::jetstream::Context,
    /// The connection for queue-group subscriptions.
    queue_client: Client,
    runtime: tokio::runtime::Handle,
}

/// This node's membership in a cluster.
pub(crate) struct Cluster {
    /// Random id sent with every message, so that a node recognises its own.
    node_id: String,
    /// `<prefix>.ch.`, to which a channel's escaped token is appended.
    subject_base: String,
    /// `<prefix>.inbox.`: followed by a node's id, where replies for that node's inboxes go.
    inbox_base: String,
    /// `<prefix>.noresp.`: followed by `<node>.<replies>.<key>`, where NATS says that a request
    /// reached no node.
    noresp_base: String,
    /// `<prefix>.presence`: every node's presence changes, heartbeats and snapshots.
    pub(crate) presence_subject: String,
    /// `cluster.presence_interval_ms` and `cluster.presence_timeout_ms`.
    pub(crate) presence_timing: (Duration, Duration),
    /// `<prefix>.nodes`: every node's status, and disconnects asked of all ([`super::nodes`]).
    pub(crate) nodes_subject: String,
    /// The other nodes heard of on `nodes_subject`.
    pub(crate) nodes: super::nodes::Nodes,
    /// When this node was built, for the uptime in its status.
    pub(crate) started: std::time::Instant,
    /// `<prefix>.sync`: a subject no node ever subscribes to, requested to learn that NATS has
    /// processed everything this node sent before (see [`server_barrier`]).
    barrier_subject: String,
    /// Client options and servers, prepared (and checked) at build time, taken by `start`.
    pending_connect: Mutex<Option<(ConnectOptions, ConnectOptions, Vec<ServerAddr>)>>,
    /// (channel, group) -> this node's NATS queue subscription, held while the group has
    /// local members.
    queue_interest: Mutex<HashMap<(Channel, String), CancellationToken>>,
    /// Set once by `start`; until then there is no client and every publish counts as dropped.
    running: OnceLock<Running>,
    /// Where channel history is kept in JetStream (`history.store = "jetstream"`).
    pub(crate) history_names: super::history::Names,
    /// Sender side of the bounded queue to the task that stores history in JetStream.
    stored: mpsc::Sender<super::history::Stored>,
    /// Receiver side, taken by `start`.
    stored_rx: Mutex<Option<mpsc::Receiver<super::history::Stored>>>,
    /// Sender side of the bounded queue to the forwarding task.
    outgoing: mpsc::Sender<Outgoing>,
    /// Receiver side, taken by `start`.
    outgoing_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Channel -> NATS subscription. Locked only by `reconcile` and queries (never across an
    /// `.await`), which is what makes interest changes from many threads converge.
    /// Keyed by channel name, or by wildcard pattern (which no channel name can equal).
    interest: Mutex<HashMap<Box<str>, Interest>>,
    counters: Arc<Counters>,
}

impl Cluster {
    /// Prepares the client options from `config`; connects nothing yet.
    pub(crate) fn new(config: &ClusterConfig) -> Result<Cluster, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let addrs = config
            .nats
            .iter()
            .map(|url| {
                url.parse::<ServerAddr>()
                    .map_err(|e| ServerError::Config(format!("cluster.nats URL {url:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let counters = Arc::new(Counters::default());
        let node_id = random_node_id();
        let options = connect_options(config, &node_id, "", &counters)?.no_echo();
        // Queue-group traffic has a connection of its own: it receives what this node
        // publishes too (the main connection is `no_echo`), so NATS alone picks the one node
        // whose members get a message, this one included.
        let queue_options = connect_options(config, &node_id, " queues", &counters)?;
        let (outgoing, outgoing_rx) = mpsc::channel(config.max_pending);
        let (stored, stored_rx) = mpsc::channel(config.max_pending);
        let mut subject_base = config.subject_prefix.clone();
        subject_base.push_str(".ch.");
        let barrier_subject = format!("{}.sync", config.subject_prefix);
        Ok(Cluster {
            node_id,
            inbox_base: format!("{}.inbox.", config.subject_prefix),
            presence_subject: format!("{}.presence", config.subject_prefix),
            nodes_subject: format!("{}.nodes", config.subject_prefix),
            nodes: super::nodes::Nodes::default(),
            started: std::time::Instant::now(),
            presence_timing: (
                Duration::from_millis(config.presence_interval_ms),
                Duration::from_millis(config.presence_timeout_ms),
            ),
            noresp_base: format!("{}.noresp.", config.subject_prefix),
            subject_base,
            barrier_subject,
            pending_connect: Mutex::new(Some((options, queue_options, addrs))),
            queue_interest: Mutex::new(HashMap::new()),
            running: OnceLock::new(),
            history_names: super::history::Names::new(&config.subject_prefix),
            stored,
            stored_rx: Mutex::new(Some(stored_rx)),
            outgoing,
            outgoing_rx: Mutex::new(Some(outgoing_rx)),
            interest: Mutex::new(HashMap::new()),
            counters,
        })
    }

    /// Starts the client (which keeps trying to reach NATS in the background) and the
    /// forwarding task. Returns at once, whether NATS is reachable or not.
    pub(crate) async fn start(&self, broker: &Arc<Broker>) -> Result<(), ServerError> {
        let Some((options, queue_options, addrs)) = self
            .pending_connect
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(()); // Already started.
        };
        let queue_client = queue_options
            .connect(addrs.clone())
            .await
            .map_err(|e| ServerError::Config(format!("cluster.nats: {e}")))?;
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| ServerError::Config(format!("cluster.nats: {e}")))?;
        let rx = self
            .outgoing_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rx) = rx {
            let mut headers = HeaderMap::new();
            headers.insert(ORIGIN_HEADER, self.node_id.as_str());
            tokio::spawn(forward(
                client.clone(),
                rx,
                headers,
                self.counters.clone(),
                broker.shutdown.clone(),
            ));
        }
        tokio::spawn(receive_for_inboxes(
            broker.clone(),
            client.clone(),
            format!("{}{}", self.inbox_base, broker.requests.node()),
            format!("{}{}.>", self.noresp_base, broker.requests.node()),
        ));
        if broker.presence.is_some() {
            tokio::spawn(super::presence::run(broker.clone(), client.clone()));
        }
        tokio::spawn(super::nodes::run(broker.clone(), client.clone()));
        let jetstream = async_nats::jetstream::new(client.clone());
        let stored_rx = self
            .stored_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let (Some(rx), true) = (
            stored_rx,
            broker.history.as_ref().is_some_and(|h| h.is_mirrored()),
        ) {
            tokio::spawn(super::history::store(broker.clone(), jetstream.clone(), rx));
        }
        tracing::info!(node = %self.node_id, "cluster: connecting to NATS");
        let _ = self.running.set(Running {
            client,
            jetstream,
            queue_client,
            runtime: tokio::runtime::Handle::current(),
        });
        Ok(())
    }

    /// Closes the NATS connection after what is already sent to it; bounded, because NATS may
    /// be unreachable at shutdown.
    pub(crate) async fn stop(&self) {
        if let Some(running) = self.running.get() {
            let drained = async {
                let _ = tokio::join!(running.client.drain(), running.queue_client.drain());
            };
            if tokio::time::timeout(Duration::from_secs(1), drained)
                .await
                .is_err()
            {
                tracing::debug!("cluster: NATS connection not drained at shutdown");
            }
        }
    }

    /// True while the client is connected to a NATS server.
    pub(crate) fn is_connected(&self) -> bool {
        self.running
            .get()
            .is_some_and(|r| r.client.connection_state() == State::Connected)
    }

    /// True when this node holds a NATS subscription for `channel` that NATS has confirmed.
    pub(crate) fn is_subscribed(&self, channel: &str) -> bool {
        self.interest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .is_some_and(|i| i.live.load(Relaxed))
    }

    /// Channels this node holds a NATS subscription for (confirmed or not).
    pub(crate) fn subscription_count(&self) -> usize {
        self.interest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Hands `payload` (the encoded copy for `channel`) to the forwarding task without waiting.
    /// Dropped and counted when NATS is not connected or the queue is full. `request` is the
    /// reply address of a request this node started: NATS then tells the node (on its
    /// `noresp` subject) when no node subscribes the channel.
    pub(crate) fn publish(&self, channel: &str, payload: Bytes, request: Option<&str>) {
        let subject = self.subject(channel);
        let reply = request
            .and_then(|address| address.strip_prefix(crate::requests::inbox::INBOX_PREFIX))
            .map(|rest| format!("{}{rest}", self.noresp_base));
        self.send(subject, payload, reply);
    }

    /// Hands `payload` (the encoded copy for history channel `channel`, without offset) to the
    /// task that stores it in JetStream, without waiting; dropped and counted when NATS is not
    /// connected or the queue is full.
    pub(crate) fn store(&self, channel: &str, payload: Bytes) {
        let Ok(channel) = Channel::new(channel) else {
            return;
        };
        if !self.is_connected()
            || self
                .stored
                .try_send(super::history::Stored { channel, payload })
                .is_err()
        {
            add(&self.counters.dropped, 1);
        }
    }

    /// Counts a message that could not cross nodes.
    pub(crate) fn count_dropped(&self) {
        add(&self.counters.dropped, 1);
    }

    /// Sends a message for an inbox of another node (a reply, or a message to a connection's
    /// inbox) to that node.
    pub(crate) fn forward_to_inbox(&self, node: &str, payload: Bytes) {
        let subject = format!("{}{node}", self.inbox_base);
        self.send(subject, payload, None);
    }

    /// Sends a presence announcement to every other node, in the order of the calls.
    pub(crate) fn send_presence(&self, payload: Bytes) {
        self.send(self.presence_subject.clone(), payload, None);
    }

    /// Sends `payload` to every other node's [`super::nodes`] task: straight to the client,
    /// not through the forwarding queue, so that it never counts as a published message (nor
    /// takes a message's place in the queue). Lost while NATS is away, as a status may be.
    pub(crate) async fn send_to_nodes(&self, payload: Bytes) {
        if let Some(running) = self.running.get() {
            if let Err(error) = running
                .client
                .publish(self.nodes_subject.clone(), payload)
                .await
            {
                tracing::debug!(%error, "cluster: node announcement not sent");
            }
        }
    }

    /// This node's random id.
    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    fn send(&self, subject: String, payload: Bytes, reply: Option<String>) {
        if !self.is_connected() {
            add(&self.counters.dropped, 1);
            return;
        }
        if self
            .outgoing
            .try_send(Outgoing {
                subject,
                payload,
                reply,
            })
            .is_err()
        {
            add(&self.counters.dropped, 1);
        }
    }

    /// True when messages for queue groups travel through NATS (both connections are up);
    /// otherwise this node's groups take what is published here, and nothing else.
    pub(crate) fn routes_queue_groups(&self) -> bool {
        self.running.get().is_some_and(|r| {
            r.client.connection_state() == State::Connected
                && r.queue_client.connection_state() == State::Connected
        })
    }

    /// Makes this node's NATS queue subscription for group `group` of `channel` match whether
    /// the group has local members. Called after every membership change.
    pub(crate) fn reconcile_queue(&self, broker: &Arc<Broker>, channel: &Channel, group: &str) {
        let Some(running) = self.running.get() else {
            return;
        };
        let mut interest = self
            .queue_interest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (channel.clone(), group.to_owned());
        let wanted = broker.queues.local_members(channel.as_str(), group) > 0;
        match (wanted, interest.contains_key(&key)) {
            (true, false) => {
                let stop = broker.shutdown.child_token();
                running.runtime.spawn(receive_queue(
                    broker.clone(),
                    running.queue_client.clone(),
                    channel.clone(),
                    group.to_owned(),
                    self.subject(channel.as_str()),
                    stop.clone(),
                ));
                interest.insert(key, stop);
            }
            (false, true) => {
                if let Some(stop) = interest.remove(&key) {
                    stop.cancel();
                }
            }
            _ => {}
        }
    }

    /// Makes this node's NATS subscription for `channel` match whether it has local
    /// subscribers. Called after every change that created or removed the channel in the hub.
    pub(crate) fn reconcile(&self, broker: &Arc<Broker>, channel: &Channel) {
        let mirrored = broker
            .history
            .as_ref()
            .filter(|h| h.is_mirrored() && h.keeps(channel.as_str()));
        let wanted = broker.hub.has_subscribers(channel.as_str())
            || mirrored.is_some_and(|h| h.has_pending(channel.as_str()));
        self.reconcile_target(broker, Target::Channel(channel.clone()), wanted);
    }

    /// [`Cluster::reconcile`] for a wildcard pattern: this node holds a NATS subscription for
    /// the pattern's subject while the pattern has local subscribers.
    pub(crate) fn reconcile_pattern(&self, broker: &Arc<Broker>, pattern: &str) {
        let wanted = broker.hub.has_pattern(pattern);
        self.reconcile_target(broker, Target::Pattern(pattern.into()), wanted);
    }

    fn reconcile_target(&self, broker: &Arc<Broker>, target: Target, wanted: bool) {
        let Some(running) = self.running.get() else {
            return; // Not started: no connection can have subscribed yet.
        };
        let mut interest = self.interest.lock().unwrap_or_else(PoisonError::into_inner);
        let key = target.name();
        if wanted && !interest.contains_key(key) {
            let stop = broker.shutdown.child_token();
            let live = Arc::new(AtomicBool::new(false));
            let key: Box<str> = key.into();
            // A history channel of a cluster is followed in JetStream, into a mirror; beyond
            // the mirrors' bounds it is received as any channel is, without history.
            let mirror = match (&target, &broker.history) {
                (Target::Channel(channel), Some(history))
                    if history.is_mirrored() && history.keeps(channel.as_str()) =>
                {
                    history
                        .open_mirror(channel.as_str())
                        .map(|mirror| (channel.clone(), mirror))
                }
                _ => None,
            };
            if let Some((channel, mirror)) = mirror {
                running.runtime.spawn(super::history::follow(
                    broker.clone(),
                    running.jetstream.clone(),
                    channel,
                    mirror,
                    (stop.clone(), live.clone()),
                ));
            } else {
                let subject = match &target {
                    Target::Channel(channel) => self.subject(channel.as_str()),
                    Target::Pattern(pattern) => self.pattern_subject(pattern),
                };
                running.runtime.spawn(receive(
                    broker.clone(),
                    running.client.clone(),
                    target,
                    subject,
                    stop.clone(),
                    live.clone(),
                ));
            }
            interest.insert(key, Interest { stop, live });
        } else if !wanted && interest.contains_key(key) {
            // A mirror that catch-ups still wait on stays, and so does its follower.
            if let (Target::Channel(channel), Some(history)) = (&target, &broker.history) {
                if history.is_mirrored()
                    && history.keeps(channel.as_str())
                    && !history.close_mirror(channel.as_str())
                {
                    return;
                }
            }
            if let Some(old) = interest.remove(key) {
                old.stop.cancel();
            }
        }
    }

    fn subject(&self, channel: &str) -> String {
        subject_under(&self.subject_base, channel)
    }

    /// The subject of a wildcard pattern: its channel tokens escaped as in [`subject_tokens`],
    /// its `*` and `>` kept as NATS wildcards.
    fn pattern_subject(&self, pattern: &str) -> String {
        let mut subject = String::with_capacity(self.subject_base.len() + pattern.len() * 3);
        subject.push_str(&self.subject_base);
        for (i, token) in pattern.split('.').enumerate() {
            if i > 0 {
                subject.push('.');
            }
            match token {
                "*" | ">" => subject.push_str(token),
                token => subject_token(token, &mut subject),
            }
        }
        subject
    }

    fn is_own(&self, message: &async_nats::Message) -> bool {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(ORIGIN_HEADER))
            .is_some_and(|origin| origin.as_str() == self.node_id)
    }

    /// The `lhttp_cluster_*` metrics, appended to `/metrics` on clustered nodes.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let connected = u64::from(self.is_connected());
        let _ = write!(
            out,
            "# HELP lhttp_cluster_connected 1 while connected to a NATS server.\n\
             # TYPE lhttp_cluster_connected gauge\nlhttp_cluster_connected {connected}\n\
             # HELP lhttp_cluster_subscriptions Channels this node holds a NATS subscription for.\n\
             # TYPE lhttp_cluster_subscriptions gauge\nlhttp_cluster_subscriptions {}\n",
            self.subscription_count()
        );
        let counters = [
            (
                "published_total",
                "Messages sent to NATS for other nodes (once per channel).",
                &self.counters.published,
            ),
            (
                "received_total",
                "Messages received from other nodes through NATS (once per channel).",
                &self.counters.received,
            ),
            (
                "dropped_total",
                "Messages that could not cross nodes: NATS disconnected, queue full, too large.",
                &self.counters.dropped,
            ),
            (
                "slow_consumers_total",
                "Slow-consumer events: messages from NATS dropped because a channel's receive \
                 queue was full, or NATS finding this node too slow (a lower bound).",
                &self.counters.slow_consumers,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = write!(
                out,
                "# HELP lhttp_cluster_{name} {help}\n# TYPE lhttp_cluster_{name} counter\n\
                 lhttp_cluster_{name} {}\n",
                counter.load(Relaxed)
            );
        }
    }
}

/// `base` (a subject prefix ending in `.`) followed by `channel`'s escaped tokens.
pub(crate) fn subject_under(base: &str, channel: &str) -> String {
    let mut subject = String::with_capacity(base.len() + channel.len() * 3);
    subject.push_str(base);
    subject_tokens(channel, &mut subject);
    subject
}

/// Escapes a channel name into one NATS subject token: `[A-Za-z0-9_-]` stay, every other byte
/// becomes `~XX` (upper-case hex). The mapping is one-to-one, and the result never contains
/// `.`, `*`, `>` or whitespace.
pub(crate) fn subject_tokens(channel: &str, out: &mut String) {
    for (i, token) in channel.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        subject_token(token, out);
    }
}

/// One token of a channel name as a NATS subject token: bytes outside `[A-Za-z0-9_-]` as `~`
/// and two hex digits, and an empty token (`a..b`) as a lone `~` (NATS tokens cannot be
/// empty; an escape always has its two digits, so a lone `~` means nothing else).
pub(crate) fn subject_token(channel: &str, out: &mut String) {
    if channel.is_empty() {
        out.push('~');
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in channel.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
}

/// Client options from `config`; `role` tells the connections of one node apart in NATS's
/// monitoring.
fn connect_options(
    config: &ClusterConfig,
    node_id: &str,
    role: &str,
    counters: &Arc<Counters>,
) -> Result<ConnectOptions, ServerError> {
    let mut options = ConnectOptions::new()
        .name(format!("lhttpd {node_id}{role}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            MAX_RECONNECT_DELAY.min(Duration::from_millis(100 * attempts as u64))
        })
        .subscription_capacity(config.max_pending)
        .require_tls(config.tls_required);
    // Unreadable TLS files are configuration errors now, not endless reconnection failures.
    for path in [
        &config.tls_ca_file,
        &config.tls_client_cert,
        &config.tls_client_key,
    ]
    .into_iter()
    .flatten()
    {
        std::fs::metadata(path).map_err(|e| {
            ServerError::Config(format!("cluster TLS file {}: {e}", path.display()))
        })?;
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_client_cert, &config.tls_client_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(path) = &config.credentials_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ServerError::Config(format!("cluster.credentials_file {}: {e}", path.display()))
        })?;
        options = options.credentials(&text).map_err(|e| {
            ServerError::Config(format!("cluster.credentials_file {}: {e}", path.display()))
        })?;
    }
    let slow = counters.clone();
    options = options.event_callback(move |event| {
        let counters = slow.clone();
        async move {
            // The client logs every event itself; only what needs counting is handled.
            if let Event::SlowConsumer(_)
            | Event::ServerError(async_nats::ServerError::SlowConsumer(_)) = event
            {
                add(&counters.slow_consumers, 1);
            }
        }
    });
    Ok(options)
}

/// A node id unlikely to repeat: std's per-process random hash keys, the clock and the pid.
fn random_node_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    let high = hasher.finish();
    hasher.write_u8(1);
    let low = hasher.finish();
    format!("{high:016x}{low:016x}")
}

/// Sends queued messages to NATS, in queue order (so order per publisher per channel holds).
async fn forward(
    client: Client,
    mut rx: mpsc::Receiver<Outgoing>,
    headers: HeaderMap,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    loop {
        let out = tokio::select! {
            _ = shutdown.cancelled() => return,
            out = rx.recv() => match out {
                Some(out) => out,
                None => return,
            },
        };
        if out.payload.len() > ALWAYS_FITS {
            let max = client.server_info().max_payload;
            // Headers travel in the same NATS message; leave them room.
            if out.payload.len() + 256 > max {
                tracing::debug!(
                    size = out.payload.len(),
                    max,
                    "cluster: message larger than the NATS max_payload, not sent"
                );
                add(&counters.dropped, 1);
                continue;
            }
        }
        let sent = match out.reply {
            Some(reply) => {
                client
                    .publish_with_reply_and_headers(
                        out.subject,
                        reply,
                        headers.clone(),
                        out.payload,
                    )
                    .await
            }
            None => {
                client
                    .publish_with_headers(out.subject, headers.clone(), out.payload)
                    .await
            }
        };
        match sent {
            Ok(()) => add(&counters.published, 1),
            Err(error) => {
                tracing::debug!(%error, "cluster: publish to NATS failed");
                add(&counters.dropped, 1);
            }
        }
    }
}

/// Completes once NATS has processed everything this client sent before the call.
///
/// `Client::flush` only empties the client's write buffer; it does not wait for the server. A
/// request to a subject nobody subscribes to does: NATS answers "no responders" after handling
/// every earlier command of this connection, the SUB included. Retries while NATS is away.
async fn server_barrier(client: &Client, subject: String) {
    loop {
        match client.request(subject.clone(), Bytes::new()).await {
            Ok(_) => return,
            Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => return,
            Err(error) => {
                tracing::debug!(%error, "cluster: waiting for NATS to confirm a subscription");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What one NATS subscription of this node delivers to.
enum Target {
    /// The exact subscribers of a channel.
    Channel(Channel),
    /// The subscribers of a wildcard pattern.
    Pattern(Box<str>),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Channel(channel) => channel.as_str(),
            Target::Pattern(pattern) => pattern,
        }
    }
}

/// Holds this node's NATS queue subscription for group `group` of `channel` (queue name: the
/// group's name) and hands each message NATS picks this node for to the local group.
async fn receive_queue(
    broker: Arc<Broker>,
    client: Client,
    channel: Channel,
    group: String,
    subject: String,
    stop: CancellationToken,
) {
    let Some(cluster) = broker.cluster.as_ref() else {
        return;
    };
    let mut subscription = tokio::select! {
        _ = stop.cancelled() => return,
        result = client.queue_subscribe(subject, group.clone()) => match result {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::warn!(%error, %channel, %group, "cluster: NATS queue subscribe failed");
                return;
            }
        },
    };
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = subscription.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        add(&cluster.counters.received, 1);
        let Ok(message) = lhttp_proto::Message::parse_with(message.payload, &broker.parser_limits)
        else {
            add(&cluster.counters.dropped, 1);
            continue;
        };
        let env = crate::requests::queue::Env::of(&*broker);
        if broker
            .queues
            .offer_to_group(channel.as_str(), &group, &message, &env)
            == crate::requests::queue::Offer::Refused
        {
            // The requester is on another node: the refusal travels as the answer.
            if let Some(reply_to) = message.header(lhttp_proto::names::REPLY_TO) {
                let refusal =
                    crate::Rejection::unavailable("no responders: the queue group is full")
                        .to_message(None);
                let _ = broker.publish_to(reply_to, &refusal, Publisher::Http);
            }
        }
    }
    // Dropping the subscription sends UNSUB.
}

/// Receives what other nodes send to this node's inboxes (replies to requests made here) and
/// NATS's "no responders" notices for requests made here.
async fn receive_for_inboxes(
    broker: Arc<Broker>,
    client: Client,
    inbox_subject: String,
    noresp_subject: String,
) {
    let (inbox, noresp) = tokio::join!(
        client.subscribe(inbox_subject),
        client.subscribe(noresp_subject.clone())
    );
    let (mut inbox, mut noresp) = match (inbox, noresp) {
        (Ok(inbox), Ok(noresp)) => (inbox, noresp),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "cluster: cannot subscribe for replies; requests to other nodes will time out");
            return;
        }
    };
    let Some(cluster) = broker.cluster.as_ref() else {
        return;
    };
    // `<prefix>.noresp.<node>.<replies>.<key>` -> `_inbox.<node>.<replies>.<key>`.
    let noresp_prefix = cluster.noresp_base.as_str();
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            message = inbox.next() => {
                let Some(message) = message else { return };
                add(&cluster.counters.received, 1);
                // The copy an inbox receives is encoded with `publish` set to its address.
                let Ok(reply) = lhttp_proto::Message::parse_with(message.payload, &broker.parser_limits) else {
                    add(&cluster.counters.dropped, 1);
                    continue;
                };
                let Some(address) = reply.header(lhttp_proto::names::PUBLISH).map(str::to_owned) else {
                    continue;
                };
                broker.requests.deliver(&address, &reply, &broker.metrics);
            }
            message = noresp.next() => {
                let Some(message) = message else { return };
                if message.status != Some(async_nats::StatusCode::NO_RESPONDERS) {
                    continue;
                }
                if let Some(rest) = message.subject.as_str().strip_prefix(noresp_prefix) {
                    let address = format!("{}{rest}", crate::requests::inbox::INBOX_PREFIX);
                    broker.requests.no_remote_responders(&address, &broker.metrics);
                }
            }
        }
    }
}

/// Holds the NATS subscription for `channel` and delivers what other nodes publish to it to
/// the local subscribers, until `stop` is cancelled.
async fn receive(
    broker: Arc<Broker>,
    client: Client,
    target: Target,
    subject: String,
    stop: CancellationToken,
    live: Arc<AtomicBool>,
) {
    let Some(cluster) = broker.cluster.as_ref() else {
        return;
    };
    let mut subscription = tokio::select! {
        _ = stop.cancelled() => return,
        result = client.subscribe(subject) => match result {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::warn!(%error, subscription = target.name(), "cluster: NATS subscribe failed");
                return;
            }
        },
    };
    // Until NATS has processed the SUB, messages from other nodes may not reach this one; the
    // barrier completes once it has. While NATS is down it waits for the reconnection, so it
    // runs beside the delivery loop rather than before it.
    let flush = server_barrier(&client, cluster.barrier_subject.clone());
    tokio::pin!(flush);
    let mut flushed = false;
    let max = broker.max_message_size;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            () = &mut flush, if !flushed => {
                flushed = true;
                live.store(true, Relaxed);
            }
            message = subscription.next() => {
                let Some(message) = message else { break };
                if cluster.is_own(&message) {
                    continue;
                }
                if message.payload.len() > max {
                    add(&cluster.counters.dropped, 1);
                    continue;
                }
                add(&cluster.counters.received, 1);
                // Each subscription of this node delivers to its own subscribers only: a
                // message matching a channel and a pattern arrives once on each.
                let frame = frame(message.payload);
                match &target {
                    Target::Channel(channel) => {
                        broker.hub.publish_exact(channel.as_str(), &frame, &broker.metrics)
                    }
                    Target::Pattern(pattern) => {
                        broker.hub.publish_pattern(pattern, &frame, &broker.metrics)
                    }
                };
            }
        }
    }
    live.store(false, Relaxed);
    // Dropping the subscription sends UNSUB.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(channel: &str) -> String {
        let mut out = String::new();
        subject_tokens(channel, &mut out);
        out
    }

    #[test]
    fn plain_names_are_kept_and_dots_separate_levels() {
        assert_eq!(token("room-1_A"), "room-1_A");
        assert_eq!(token("chat.lobby"), "chat.lobby");
    }

    #[test]
    fn wildcards_and_other_bytes_are_escaped_and_empty_tokens_marked() {
        assert_eq!(token("*"), "~2A");
        assert_eq!(token(">"), "~3E");
        assert_eq!(token("a~2Eb"), "a~7E2Eb");
        assert_eq!(token("é"), "~C3~A9");
        assert_eq!(token("x/y:z"), "x~2Fy~3Az");
        assert_eq!(token("a..b"), "a.~.b");
        assert_eq!(token(".a"), "~.a");
    }

    #[test]
    fn escaping_is_one_to_one_and_every_level_is_a_nats_token() {
        let names = [
            "a.b", "a~2Eb", "a~2eb", "a b", "a", "A", ".", "~", "~~", "~7E", "a..b", "a.~.b",
        ];
        let subjects: std::collections::HashSet<String> = names.iter().map(|n| token(n)).collect();
        assert_eq!(subjects.len(), names.len());
        for subject in &subjects {
            for level in subject.split('.') {
                assert!(!level.is_empty(), "{subject}");
                assert!(
                    level
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'~'),
                    "{subject}"
                );
            }
        }
    }

    #[test]
    fn node_ids_differ() {
        assert_ne!(random_node_id(), random_node_id());
        assert_eq!(random_node_id().len(), 32);
    }

    #[test]
    fn bad_cluster_config_is_refused() {
        let bad = |change: fn(&mut ClusterConfig)| {
            let mut config = ClusterConfig {
                nats: vec!["nats://127.0.0.1:4222".into()],
                ..ClusterConfig::default()
            };
            change(&mut config);
            config.validate().is_err()
        };
        assert!(bad(|c| c.subject_prefix = "a.*".into()));
        assert!(bad(|c| c.subject_prefix = "a..b".into()));
        assert!(bad(|c| c.subject_prefix = String::new()));
        assert!(bad(|c| c.user = Some("u".into())));
        assert!(bad(|c| c.tls_client_cert = Some("client.pem".into())));
        assert!(bad(|c| c.nats = vec!["::not a url".into()]));
        assert!(!bad(|c| c.subject_prefix = "prod.lhttp".into()));
    }
}
