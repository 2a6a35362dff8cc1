//! [`Server`]: building the engine, running it on a listener, and [`ServerHandle`] to use it
//! from code.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, atomic::AtomicU64},
};

use lhttp_proto::Message;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Channel, Config, Filter, Hub, Metrics, Processor, PublishReport, Rejection,
    cluster::Cluster,
    http,
    http::accept,
    http::origin::Site,
    metrics::{Gauges, add},
    pubsub::channel,
    pubsub::publish::encode_for_channel,
    requests::gateway::Gateway,
    requests::inbox::{InboxDelivery, Requests, is_inbox},
    requests::queue::{Charge, Env, Offered, Publisher, Queues, Refusal},
    requests::upstream::Upstream,
    security::auth::Verifier,
    security::peers::ConnectionsPerIp,
    security::permissions::Permissions,
    security::throttle::AuthThrottle,
    session,
    session::builtin::{self, names},
    transport::budget::UnfinishedBudget,
    transport::outbox::frame,
    validation::Listeners,
};

/// Why a server could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A processor was registered for a name that cannot be a command, or for `auth`, which
    /// the server handles itself.
    #[error("invalid command name {0:?}")]
    InvalidCommand(String),
    /// Two processors were registered for the same command.
    #[error("a processor is already registered for command {0:?}")]
    DuplicateProcessor(String),
    /// The listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// State shared by every connection task and HTTP handler of one server.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) parser_limits: lhttp_proto::Limits,
    pub(crate) hub: Hub,
    /// Shared with request timers, which outlive the call that started them.
    pub(crate) metrics: Arc<Metrics>,
    /// Inboxes and the requests waiting for answers.
    pub(crate) requests: Requests,
    /// Queue groups by channel.
    pub(crate) queues: Queues,
    /// The HTTP gateway's inbox.
    pub(crate) gateway: Gateway,
    next_gateway_request: AtomicU64,
    /// Command -> processor. Read-only after build, so shared without a lock.
    pub(crate) processors: HashMap<String, Arc<dyn Processor>, foldhash::quality::RandomState>,
    /// Every processor in registration order, for the open and close hooks.
    pub(crate) processor_order: Vec<Arc<dyn Processor>>,
    /// Built-in filters, then user filters in registration order. Read-only after build.
    pub(crate) filters: Vec<Arc<dyn Filter>>,
    /// Cancelled when the server starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so that shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// One permit per open WebSocket connection (`limits.max_connections`).
    pub(crate) connection_slots: Arc<Semaphore>,
    /// WebSocket connections per client address (`limits.max_connections_per_ip`).
    pub(crate) connections_per_ip: Arc<ConnectionsPerIp>,
    /// One permit per TCP connection still speaking HTTP (`limits.max_http_connections`),
    /// taken at accept and given back when it ends or becomes a WebSocket.
    pub(crate) http_connection_slots: Arc<Semaphore>,
    /// The same per client address (`limits.max_http_connections_per_ip`).
    pub(crate) http_connections_per_ip: Arc<ConnectionsPerIp>,
    pub(crate) next_connection_id: AtomicU64,
    pub(crate) upstream: Upstream,
    /// The broker seam: `None` on a single node, where publishing is local fan-out only and
    /// no NATS code runs; the NATS membership when `[cluster] nats` is set.
    pub(crate) cluster: Option<Cluster>,
    /// Token verification keys, read once at build.
    pub(crate) verifier: Verifier,
    /// Bytes held for large unfinished WebSocket messages (`limits.unfinished_message_bytes`).
    pub(crate) unfinished: Arc<UnfinishedBudget>,
    /// Failed authentications per address, and the token size limit.
    pub(crate) auth_throttle: AuthThrottle,
    /// The compiled `[[auth.rules]]`.
    pub(crate) permissions: Permissions,
    /// The certificates of the TLS listeners.
    pub(crate) tls: Listeners,
    /// Files the main port serves over GET ([`ServerBuilder::static_file`]).
    pub(crate) static_files: Vec<StaticFile>,
}

/// A file served over GET on the main port.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StaticFile {
    pub(crate) path: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static str,
}

impl Shared {
    /// The `request-id` of the next gateway request.
    pub(crate) fn next_gateway_request(&self) -> String {
        self.next_gateway_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string()
    }
}

/// Builds a [`Server`]: configuration, processors, filters.
pub struct ServerBuilder {
    config: Config,
    static_files: Vec<StaticFile>,
    processors: Vec<(String, Arc<dyn Processor>)>,
    filters: Vec<Arc<dyn Filter>>,
    upstream_routes: Vec<(String, String)>,
}

impl ServerBuilder {
    /// Adds a named upstream route (as `[upstream.routes]` does): clients may then send
    /// `upstream:POST name`, and processors may call it with
    /// [`Upstream::call_route`](crate::requests::upstream::Upstream::call_route).
    pub fn upstream_route(mut self, name: &str, url: &str) -> Self {
        self.upstream_routes.push((name.to_owned(), url.to_owned()));
        self
    }

    /// Serves `body` at `GET path` on the main port, with `content_type` (and `no-cache`,
    /// `nosniff`). Nothing is served this way unless added: `lhttpd` adds the chat demo and
    /// the JavaScript SDK (`/`, `/chat.js`, `/chat.css`, `/sdk/lhttp.js`, `/sdk/lhttp.d.ts`);
    /// a program that embeds the server adds its own pages, or none.
    pub fn static_file(
        mut self,
        path: &'static str,
        content_type: &'static str,
        body: &'static str,
    ) -> Self {
        self.static_files.push(StaticFile {
            path,
            content_type,
            body,
        });
        self
    }

    /// Registers `processor` for messages whose command is `command`.
    pub fn processor(mut self, command: &str, processor: impl Processor) -> Self {
        self.processors
            .push((command.to_owned(), Arc::new(processor)));
        self
    }

    /// Appends `filter` to the chain, after the built-ins and the filters added before it.
    pub fn filter(mut self, filter: impl Filter) -> Self {
        self.filters.push(Arc::new(filter));
        self
    }

    /// Checks the configuration and the registrations.
    pub fn build(self) -> Result<Server, ServerError> {
        // The one validation, shared with `lhttpd --check-config`; it builds the key verifier,
        // the permissions and the cluster client on the way.
        let crate::validation::Checked {
            verifier,
            permissions,
            cluster,
            tls,
        } = self.config.checked()?;
        let mut processors = HashMap::default();
        let mut processor_order = Vec::new();
        for (command, processor) in self.processors {
            // `auth` is answered by the server itself (see session.rs), before any processor.
            if !lhttp_proto::is_valid_command(&command) || command == "auth" {
                return Err(ServerError::InvalidCommand(command));
            }
            if processors.contains_key(&command) {
                return Err(ServerError::DuplicateProcessor(command));
            }
            processor_order.push(processor.clone());
            processors.insert(command, processor);
        }
        let mut filters: Vec<Arc<dyn Filter>> = vec![
            Arc::new(builtin::MultipartCheck),
            Arc::new(builtin::UpstreamCall),
            Arc::new(builtin::PubSub),
        ];
        filters.extend(self.filters);
        let limits = &self.config.limits;
        let upstream = Upstream::new(
            &self.config.upstream,
            &self.upstream_routes,
            limits.max_message_size.saturating_sub(1024),
        )
        .map_err(ServerError::Config)?;
        let requests_config = self.config.requests.clone();
        let queues = Queues::new(self.config.queues.clone());
        for route in &self.config.gateway {
            let channel =
                Channel::new(&route.channel).map_err(|e| ServerError::Config(e.to_string()))?;
            queues.declare(&channel, &route.queue);
        }
        let gateway = Gateway::new(&self.config.gateway);
        let shared = Shared {
            tls,
            static_files: self.static_files,
            verifier,
            permissions,
            cluster,
            upstream,
            parser_limits: limits.parser(),
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            connections_per_ip: Arc::new(ConnectionsPerIp::new(limits.max_connections_per_ip)),
            auth_throttle: AuthThrottle::new(limits),
            unfinished: Arc::new(UnfinishedBudget::new(
                limits.unfinished_message_bytes,
                limits.message_timeout(),
            )),
            http_connection_slots: Arc::new(Semaphore::new(limits.max_http_connections)),
            http_connections_per_ip: Arc::new(ConnectionsPerIp::new(
                limits.max_http_connections_per_ip,
            )),
            config: self.config,
            hub: Hub::default(),
            metrics: Arc::default(),
            requests: Requests::new(requests_config),
            queues,
            gateway,
            next_gateway_request: AtomicU64::new(1),
            processors,
            processor_order,
            filters,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_connection_id: AtomicU64::new(1),
        };
        Ok(Server {
            shared: Arc::new(shared),
            metrics_listener: None,
            tcp_listener: None,
            tls_listener: None,
        })
    }
}

/// The lhttp engine: WebSocket connections, the hub, and the HTTP endpoints on one port.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use lhttp_server::{Config, Server};
///
/// let server = Server::builder(Config::default()).build()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
/// server.run(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct Server {
    shared: Arc<Shared>,
    /// Set by [`Server::metrics_listener`]; otherwise `run` binds `server.metrics_listen`.
    metrics_listener: Option<TcpListener>,
    /// Set by [`Server::tcp_listener`]; otherwise `run` binds `transports.tcp.listen`.
    tcp_listener: Option<TcpListener>,
    /// Set by [`Server::tls_listener`]; otherwise `run` binds `transports.tls.listen`.
    tls_listener: Option<TcpListener>,
}

impl Server {
    /// Starts building a server with `config`.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            static_files: Vec::new(),
            processors: Vec::new(),
            filters: Vec::new(),
            upstream_routes: Vec::new(),
        }
    }

    /// A handle to publish and inspect the server from code.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves `GET /metrics` and `GET /healthz` on `listener` instead of the main port (as
    /// `server.metrics_listen` does, with a listener the caller bound, e.g. on port 0).
    pub fn metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Serves `[transports.tcp]` on `listener` (one the caller bound, e.g. on port 0) instead
    /// of binding `transports.tcp.listen`; the block must be configured.
    pub fn tcp_listener(mut self, listener: TcpListener) -> Self {
        self.tcp_listener = Some(listener);
        self
    }

    /// Serves `[transports.tls]` on `listener` instead of binding `transports.tls.listen`; the
    /// block must be configured.
    pub fn tls_listener(mut self, listener: TcpListener) -> Self {
        self.tls_listener = Some(listener);
        self
    }

    /// Serves on `listener` until `shutdown` completes or [`ServerHandle::shutdown`] is
    /// called, then shuts down gracefully: stops accepting, sends close 1001 to every client
    /// after what is already queued for it, and returns once they are done or
    /// `server.shutdown_timeout_ms` has passed.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let shared = self.shared;
        let metrics_listener = match (self.metrics_listener, shared.config.server.metrics_listen) {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) => Some(TcpListener::bind(addr).await?),
            (None, None) => None,
        };
        if let Some(cluster) = &shared.cluster {
            cluster.start(&shared).await?;
        }
        let token = shared.shutdown.clone();
        let signal = {
            let token = token.clone();
            async move {
                tokio::select! {
                    _ = shutdown => token.cancel(),
                    _ = token.cancelled() => {}
                }
            }
        };
        let streams = bind_streams(&shared, self.tcp_listener, self.tls_listener).await?;
        let timeout = shared.config.server.shutdown_timeout();
        let builder = Arc::new(accept::http_builder(&shared.config.limits));
        let http_connections = TaskTracker::new();
        let main_site = Site::new(listener.local_addr()?);
        let main = accept::accept_loop(
            listener,
            http::router(shared.clone(), metrics_listener.is_none(), main_site),
            shared.clone(),
            builder.clone(),
            http_connections.clone(),
            shared.tls.main.clone(),
        );
        let ops_site = match &metrics_listener {
            Some(listener) => Some(Site::new(listener.local_addr()?)),
            None => None,
        };
        let ops = async {
            if let (Some(listener), Some(site)) = (metrics_listener, ops_site) {
                let router = http::ops_router(shared.clone(), site);
                accept::accept_loop(
                    listener,
                    router,
                    shared.clone(),
                    builder.clone(),
                    http_connections.clone(),
                    None,
                )
                .await;
            }
        };
        for tls in [&shared.tls.main, &shared.tls.stream].into_iter().flatten() {
            shared
                .tasks
                .spawn(tls.clone().watch(shared.shutdown.clone()));
        }
        // The accept loops return once shutdown has started.
        tokio::join!(signal, main, ops, streams.serve(&shared));
        // HTTP requests in flight get the shutdown timeout too; a slow client cannot hold the
        // process open.
        http_connections.close();
        if tokio::time::timeout(timeout, http_connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("HTTP requests still in flight at shutdown");
        }
        shared.tasks.close();
        if tokio::time::timeout(timeout, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tasks.len(),
                "connections still open after the shutdown timeout"
            );
        }
        if let Some(cluster) = &shared.cluster {
            cluster.stop().await;
        }
        Ok(())
    }
}

/// Uses a running server from code: publish as `POST /publish` does, read its state, stop it.
/// Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        ServerHandle { shared }
    }

    /// Publishes `message` to the channels in its `publish` header(s).
    ///
    /// Fails with 400 when there is no `publish` header, a channel name is invalid, or there
    /// are more than `limits.max_publish_channels` channels; nothing is delivered then. Work
    /// for queue groups is charged to one account shared by every `POST /publish` and every
    /// caller of this function (`queues.max_queued_bytes_per_publisher`): beyond it the
    /// publish fails with 429, and with 503 when the server's `queues.max_queued_bytes` is
    /// full, before anything is delivered. A plain message that a group's full waiting queue
    /// refused fails with 503 after reaching the others; a request (with `reply-to`) only
    /// when nobody took it.
    pub fn publish(&self, message: &Message) -> Result<PublishReport, Rejection> {
        self.publish_as(message, Publisher::Http)
    }

    /// [`ServerHandle::publish`] with queue-group work charged to `publisher`.
    pub(crate) fn publish_as(
        &self,
        message: &Message,
        publisher: Publisher,
    ) -> Result<PublishReport, Rejection> {
        // One channel, the usual case, needs no list collected.
        let (one, list);
        let channels: &[&str] = match channel::PublishList::of(message.headers()) {
            channel::PublishList::One { name, .. } => {
                channel::check(name)?;
                one = [name];
                &one
            }
            _ => {
                list = channel::parse_list(message.headers().get_all(names::PUBLISH))?;
                &list
            }
        };
        if channels.is_empty() {
            return Err(Rejection::bad_request("no channel in a publish header"));
        }
        // Each channel is a fan-out of its own: 10,000 of them in one message cost about
        // 1.25 ms of server CPU, for one token of the sender's message rate.
        let max = self.shared.config.limits.max_publish_channels;
        if channels.len() > max {
            return Err(Rejection::bad_request(format!(
                "a message may be published to at most {max} channels"
            )));
        }
        let mut charge = self.reserve(channels, message, publisher)?;
        let mut report = PublishReport::default();
        let mut refused = None;
        for &channel in channels {
            report.channels += 1;
            let routed = self.route(channel, message, publisher, &mut charge);
            report.deliveries += routed.deliveries;
            report.queued += routed.offered.taken;
            refused = worst(refused, routed.offered.refused);
        }
        refusal_answer(message, report.deliveries + report.queued, refused)?;
        Ok(report)
    }

    /// Publishes `message` to `channel` only, whatever its `publish` header says; returns the
    /// number of local subscribers and queue groups that took it. Refused as
    /// [`ServerHandle::publish`] is.
    pub fn publish_to(&self, channel: &str, message: &Message) -> Result<usize, Rejection> {
        channel::check(channel)?;
        let (deliveries, queued) = self.publish_checked_by(channel, message, Publisher::Http)?;
        Ok(deliveries + queued)
    }

    /// Publishes to `channel`, a name already checked, with queue-group work charged to
    /// `publisher`. Returns (local subscribers it was queued for, queue groups that took it);
    /// refused with 429 when that publisher's share is full and 503 when the server's budget
    /// or the group's waiting queue is (for a request: when nobody took it), before anything
    /// is delivered.
    pub(crate) fn publish_checked_by(
        &self,
        channel: &str,
        message: &Message,
        publisher: Publisher,
    ) -> Result<(usize, usize), Rejection> {
        if self.shared.queues.is_empty() {
            // Plain pub/sub (no queue group was ever made): nothing to charge or refuse, and
            // this runs for every message (callgrind 1 -> 1: 50 instructions a message less).
            let routed = self.route(channel, message, publisher, &mut None);
            return Ok((routed.deliveries, 0));
        }
        let mut charge = self.reserve(&[channel], message, publisher)?;
        let routed = self.route(channel, message, publisher, &mut charge);
        let taken = routed.deliveries + routed.offered.taken;
        refusal_answer(message, taken, routed.offered.refused)?;
        Ok((routed.deliveries, routed.offered.taken))
    }

    /// True when this node's queue groups take their work from the publish itself: some group
    /// was ever made, and no connected cluster routes it through NATS instead (which picks one
    /// node per group, this one included).
    fn groups_take_here(&self) -> bool {
        !self.shared.queues.is_empty()
            && !self
                .shared
                .cluster
                .as_ref()
                .is_some_and(|c| c.routes_queue_groups())
    }

    /// Charges `publisher` for the queue-group work of publishing `message` to `channels`,
    /// before anything is delivered (see [`Queues::reserve`]); one atomic load when no group
    /// was ever made, which is plain pub/sub's whole cost here.
    fn reserve(
        &self,
        channels: &[&str],
        message: &Message,
        publisher: Publisher,
    ) -> Result<Option<Charge>, Rejection> {
        if !self.groups_take_here() {
            return Ok(None);
        }
        self.shared
            .queues
            .reserve(channels, message, publisher)
            .map_err(|refusal| {
                add(&self.shared.metrics.queue_refused_bytes, 1);
                refusal.rejection()
            })
    }

    /// Delivers `message` on `channel`: to its local subscribers, to this node's queue groups
    /// (their jobs charged from `charge`), and to other nodes in a cluster.
    fn route(
        &self,
        channel: &str,
        message: &Message,
        publisher: Publisher,
        charge: &mut Option<Charge>,
    ) -> Routed {
        let shared = &*self.shared;
        let metrics = &shared.metrics;
        add(&metrics.messages_published, 1);
        if is_inbox(channel) {
            let node = Requests::node_of(channel);
            if let (Some(cluster), Some(node)) = (&shared.cluster, node) {
                if node != shared.requests.node() {
                    cluster.forward_to_inbox(node, encode_for_channel(message, channel));
                    return Routed::delivered(1);
                }
            }
            let delivery = shared.requests.deliver(channel, message, metrics);
            return Routed::delivered(usize::from(delivery == InboxDelivery::Delivered));
        }
        // In a connected cluster, queue groups get their messages through NATS (which picks
        // one node per group, this one included); otherwise this node's groups take them here.
        let offered = if !self.groups_take_here() {
            Offered::default()
        } else {
            shared
                .queues
                .offer(channel, message, publisher, charge, &Env::of(self))
        };
        let Some(cluster) = &shared.cluster else {
            // Encoded only when the channel has subscribers, found with one lookup.
            let encode = || frame(encode_for_channel(message, channel));
            let deliveries = shared.hub.publish_with(channel, encode, metrics);
            return Routed {
                deliveries,
                offered,
            };
        };
        let local = shared.hub.has_subscribers(channel);
        // Other nodes get the very bytes local subscribers get: encoded once, shared.
        let bytes = encode_for_channel(message, channel);
        let request = message
            .header(names::REPLY_TO)
            .filter(|address| Requests::node_of(address) == Some(shared.requests.node()));
        cluster.publish(channel, bytes.clone(), request);
        if !local {
            return Routed {
                deliveries: 0,
                offered,
            };
        }
        Routed {
            deliveries: shared.hub.publish(channel, &frame(bytes), metrics),
            offered,
        }
    }

    /// Called after a queue group's membership changed: a cluster node holds a NATS queue
    /// subscription for the group while it has local members.
    pub(crate) fn queue_interest_changed(&self, group: &crate::requests::queue::QueueGroup) {
        if let Some(cluster) = &self.shared.cluster {
            cluster.reconcile_queue(&self.shared, group.channel_name(), group.name());
        }
    }

    /// Called when `channel` gained its first or lost its last local subscriber: a cluster
    /// node then subscribes to it in NATS or unsubscribes.
    pub(crate) fn interest_changed(&self, channel: &Channel) {
        if let Some(cluster) = &self.shared.cluster {
            cluster.reconcile(&self.shared, channel);
        }
    }

    /// `None` on a single node; on a cluster node, whether it is connected to NATS now.
    pub fn cluster_connected(&self) -> Option<bool> {
        self.shared.cluster.as_ref().map(Cluster::is_connected)
    }

    /// True when this node holds a NATS subscription for `channel` that NATS has confirmed
    /// (it has local subscribers and a cluster is configured).
    pub fn cluster_subscribed(&self, channel: &str) -> bool {
        self.shared
            .cluster
            .as_ref()
            .is_some_and(|c| c.is_subscribed(channel))
    }

    /// Channels this node holds a NATS subscription for; 0 on a single node.
    pub fn cluster_subscription_count(&self) -> usize {
        self.shared
            .cluster
            .as_ref()
            .map_or(0, Cluster::subscription_count)
    }

    /// A connection to this server from the same process, with no socket: the client's end of
    /// a pipe into a session of its own, speaking the byte-stream framing of docs/protocol.md
    /// ("Byte streams"). Give it to `lhttp_client` (or any reader of that framing). Messages
    /// arrive exactly once and in order; limits, permissions and queue groups apply as to any
    /// connection. The connection counts as authenticated (it is the embedding program) and
    /// may still send `auth` to act as a user. When the server is full or shutting down, the
    /// stream holds a `close` message and ends.
    pub fn connect_in_process(&self) -> tokio::io::DuplexStream {
        session::accept::in_process(&self.shared)
    }

    /// Reads the certificate files of every TLS listener again (`lhttpd` does on SIGHUP); new
    /// connections get the new certificates. On an error the old certificate stays in use and
    /// the error says which file is at fault.
    pub fn reload_tls(&self) -> Result<(), String> {
        let tls = &self.shared.tls;
        for server in [&tls.main, &tls.stream].into_iter().flatten() {
            server.log_reload(false)?;
        }
        Ok(())
    }

    /// The upstream caller, to call configured routes from code.
    pub fn upstream(&self) -> &Upstream {
        &self.shared.upstream
    }

    /// The subscription table.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// Queue-group memberships over all groups.
    pub fn queue_member_count(&self) -> usize {
        self.shared.queues.member_count()
    }

    /// Requests waiting for their terminal answer.
    pub fn pending_request_count(&self) -> usize {
        self.shared.requests.pending_count()
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.shared.config.limits.max_connections - self.shared.connection_slots.available_permits()
    }

    /// Open WebSocket connections from `ip` (from its /64 network for IPv6), as counted for
    /// `limits.max_connections_per_ip`; 0 when that limit is off.
    pub fn connections_from(&self, ip: std::net::IpAddr) -> usize {
        self.shared.connections_per_ip.count(ip)
    }

    /// Open TCP connections that speak HTTP (not upgraded), as counted for
    /// `limits.max_http_connections`.
    pub fn http_connection_count(&self) -> usize {
        self.shared.config.limits.max_http_connections
            - self.shared.http_connection_slots.available_permits()
    }

    /// Client addresses (IPv6: /64 networks) with open WebSocket connections, as counted for
    /// `limits.max_connections_per_ip`; 0 when that limit is off.
    pub fn connected_addresses(&self) -> usize {
        self.shared.connections_per_ip.addresses()
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Starts a graceful shutdown, as the `shutdown` future of [`Server::run`] does.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// True once shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Every metric in the Prometheus text format, as served at `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        let hub = &self.shared.hub;
        let mut out = self.shared.metrics.render(&Gauges {
            connections: self.connection_count() as u64,
            http_connections: self.http_connection_count() as u64,
            unfinished_message_bytes: self.shared.unfinished.held() as u64,
            channels: hub.channel_count() as u64,
            subscriptions: hub.subscription_count() as u64,
            inboxes: self.shared.requests.inbox_count() as u64,
            pending_requests: self.shared.requests.pending_count() as u64,
            queue_groups: self.shared.queues.group_count() as u64,
            queue_members: self.shared.queues.member_count() as u64,
            queued_bytes: self.shared.queues.queued_bytes() as u64,
        });
        if let Some(cluster) = &self.shared.cluster {
            cluster.render(&mut out);
        }
        out
    }
}

/// What one channel of a publish reached.
struct Routed {
    /// Local subscribers (or the inbox) it was queued for.
    deliveries: usize,
    /// What this node's queue groups did with it.
    offered: Offered,
}

impl Routed {
    fn delivered(deliveries: usize) -> Self {
        Routed {
            deliveries,
            offered: Offered::default(),
        }
    }
}

fn worst(a: Option<Refusal>, b: Option<Refusal>) -> Option<Refusal> {
    match (a, b) {
        (a, None) => a,
        (a, Some(b)) => Some(Refusal::worst(a, b)),
    }
}

/// The answer to a publish some queue group refused: a plain message is refused wherever it
/// was (its publisher must know that work was not queued); a request only when nobody took
/// it, since whoever did may still answer.
fn refusal_answer(
    message: &Message,
    taken: usize,
    refused: Option<Refusal>,
) -> Result<(), Rejection> {
    match refused {
        Some(_) if taken > 0 && message.headers().contains(names::REPLY_TO) => Ok(()),
        Some(refusal) => Err(refusal.rejection()),
        None => Ok(()),
    }
}

/// The byte-stream listeners of `[transports]`, bound.
struct Streams {
    tcp: Option<TcpListener>,
    tls: Option<TcpListener>,
    unix: Option<(tokio::net::UnixListener, std::path::PathBuf)>,
}

/// Binds the listeners `[transports]` configures (or takes the ones the caller bound).
async fn bind_streams(
    shared: &Shared,
    tcp: Option<TcpListener>,
    tls: Option<TcpListener>,
) -> Result<Streams, ServerError> {
    let transports = &shared.config.transports;
    let bind = |name: &str, given: Option<TcpListener>, addr: Option<std::net::SocketAddr>| {
        let name = name.to_owned();
        async move {
            match (given, addr) {
                (_, None) => Ok(None),
                (Some(listener), Some(_)) => Ok(Some(listener)),
                (None, Some(addr)) => TcpListener::bind(addr).await.map(Some).map_err(|e| {
                    ServerError::Io(std::io::Error::new(e.kind(), format!("{name} {addr}: {e}")))
                }),
            }
        }
    };
    let tcp = bind(
        "transports.tcp.listen",
        tcp,
        transports.tcp.as_ref().map(|t| t.listen),
    )
    .await?;
    let tls = bind(
        "transports.tls.listen",
        tls,
        transports.tls.as_ref().map(|t| t.listen),
    )
    .await?;
    let unix = match &transports.unix {
        None => None,
        Some(config) => {
            let listener = session::accept::bind_unix(config).map_err(|e| {
                ServerError::Io(std::io::Error::new(
                    e.kind(),
                    format!("transports.unix.path {}: {e}", config.path.display()),
                ))
            })?;
            Some((listener, config.path.clone()))
        }
    };
    Ok(Streams { tcp, tls, unix })
}

impl Streams {
    /// Accepts on every listener until shutdown starts.
    async fn serve(self, shared: &Arc<Shared>) {
        let tcp = async {
            if let Some(listener) = self.tcp {
                session::accept::tcp_loop(listener, shared.clone(), None).await;
            }
        };
        let tls = async {
            if let Some(listener) = self.tls {
                let certificates = shared.tls.stream.clone();
                session::accept::tcp_loop(listener, shared.clone(), certificates).await;
            }
        };
        let unix = async {
            if let Some((listener, path)) = self.unix {
                session::accept::unix_loop(listener, &path, shared.clone()).await;
            }
        };
        tokio::join!(tcp, tls, unix);
    }
}
