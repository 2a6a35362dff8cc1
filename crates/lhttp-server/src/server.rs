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
    Channel, Config, Filter, Hub, Metrics, Processor, PublishReport, Rejection, accept,
    builtin::{self, names},
    channel,
    cluster::Cluster,
    http,
    metrics::{Gauges, add},
    outbox::frame,
    peers::ConnectionsPerIp,
    publish::encode_for_channel,
    upstream::Upstream,
};

/// Why a server could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A processor was registered for a name that cannot be a command.
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
    pub(crate) metrics: Metrics,
    /// Command -> processor. Read-only after build, so shared without a lock.
    pub(crate) processors: HashMap<String, Arc<dyn Processor>>,
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
    pub(crate) next_connection_id: AtomicU64,
    pub(crate) upstream: Upstream,
    /// The broker seam: `None` on a single node, where publishing is local fan-out only and
    /// no NATS code runs; the NATS membership when `[cluster] nats` is set.
    pub(crate) cluster: Option<Cluster>,
}

/// Builds a [`Server`]: configuration, processors, filters.
pub struct ServerBuilder {
    config: Config,
    processors: Vec<(String, Arc<dyn Processor>)>,
    filters: Vec<Arc<dyn Filter>>,
    upstream_routes: Vec<(String, String)>,
}

impl ServerBuilder {
    /// Adds a named upstream route (as `[upstream.routes]` does): clients may then send
    /// `upstream:POST name`, and processors may call it with
    /// [`Upstream::call_route`](crate::upstream::Upstream::call_route).
    pub fn upstream_route(mut self, name: &str, url: &str) -> Self {
        self.upstream_routes.push((name.to_owned(), url.to_owned()));
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
        self.config.limits.validate().map_err(ServerError::Config)?;
        self.config.server.validate().map_err(ServerError::Config)?;
        let mut processors = HashMap::new();
        let mut processor_order = Vec::new();
        for (command, processor) in self.processors {
            if !lhttp_proto::is_valid_command(&command) {
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
        let cluster = if self.config.cluster.enabled() {
            Some(Cluster::new(&self.config.cluster)?)
        } else {
            None
        };
        let shared = Shared {
            cluster,
            upstream,
            parser_limits: limits.parser(),
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            connections_per_ip: Arc::new(ConnectionsPerIp::new(limits.max_connections_per_ip)),
            config: self.config,
            hub: Hub::default(),
            metrics: Metrics::default(),
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
}

impl Server {
    /// Starts building a server with `config`.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
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
        let timeout = shared.config.server.shutdown_timeout();
        let builder = Arc::new(accept::http_builder(&shared.config.limits));
        let http_connections = TaskTracker::new();
        let main = accept::accept_loop(
            listener,
            http::router(shared.clone(), metrics_listener.is_none()),
            shared.clone(),
            builder.clone(),
            http_connections.clone(),
        );
        let ops = async {
            if let Some(listener) = metrics_listener {
                let router = http::ops_router(shared.clone());
                accept::accept_loop(
                    listener,
                    router,
                    shared.clone(),
                    builder.clone(),
                    http_connections.clone(),
                )
                .await;
            }
        };
        // The accept loops return once shutdown has started.
        tokio::join!(signal, main, ops);
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
    /// Fails with 400 when there is no `publish` header or a channel name is invalid; nothing
    /// is delivered then.
    pub fn publish(&self, message: &Message) -> Result<PublishReport, Rejection> {
        let channels = channel::parse_list(message.headers().get_all(names::PUBLISH))?;
        if channels.is_empty() {
            return Err(Rejection::bad_request("no channel in a publish header"));
        }
        let mut report = PublishReport::default();
        for channel in channels {
            report.channels += 1;
            report.deliveries += self.publish_checked(channel, message);
        }
        Ok(report)
    }

    /// Publishes `message` to `channel` only, whatever its `publish` header says; returns the
    /// number of local subscribers it was queued for.
    pub fn publish_to(&self, channel: &str, message: &Message) -> Result<usize, Rejection> {
        channel::check(channel)?;
        Ok(self.publish_checked(channel, message))
    }

    fn publish_checked(&self, channel: &str, message: &Message) -> usize {
        let metrics = &self.shared.metrics;
        add(&metrics.messages_published, 1);
        let local = self.shared.hub.has_subscribers(channel);
        let Some(cluster) = &self.shared.cluster else {
            if !local {
                return 0;
            }
            let frame = frame(encode_for_channel(message, channel));
            return self.shared.hub.publish(channel, &frame, metrics);
        };
        // Other nodes get the very bytes local subscribers get: encoded once, shared.
        let bytes = encode_for_channel(message, channel);
        cluster.publish(channel, bytes.clone());
        if !local {
            return 0;
        }
        self.shared.hub.publish(channel, &frame(bytes), metrics)
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

    /// The upstream caller, to call configured routes from code.
    pub fn upstream(&self) -> &Upstream {
        &self.shared.upstream
    }

    /// The subscription table.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
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
            channels: hub.channel_count() as u64,
            subscriptions: hub.subscription_count() as u64,
        });
        if let Some(cluster) = &self.shared.cluster {
            cluster.render(&mut out);
        }
        out
    }
}
