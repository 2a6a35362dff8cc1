//! [`Server`]: building the engine, running it on a listener, and [`ServerHandle`] to use it
//! from code.

use std::{collections::HashMap, future::Future, sync::Arc};

use lhttp_proto::names;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Channel, Config, Filter, Processor, ServerError, ServerHandle,
    broker::{self, Broker},
    http::{self, StaticFile, accept, origin::Site},
    pubsub::history::{self, History},
    pubsub::presence::Presence,
    requests::gateway::Gateway,
    requests::inbox::Requests,
    requests::queue::Queues,
    requests::upstream::Upstream,
    security::{Security, admission::Admission, throttle::AuthThrottle},
    session::{
        self,
        builtin::{self},
        directory::{Directory, Target},
        sessions::{Commands, Sessions},
    },
    transport::budget::UnfinishedBudget,
};

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
        path: impl Into<std::borrow::Cow<'static, str>>,
        content_type: &'static str,
        body: &'static str,
    ) -> Self {
        self.static_files.push(StaticFile {
            path: path.into(),
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
            // These are answered by the server itself, before any processor.
            let builtin = [
                names::command::AUTH,
                names::command::PING,
                names::command::HISTORY,
                names::command::PRESENCE,
            ];
            if !lhttp_proto::is_valid_command(&command) || builtin.contains(&command.as_str()) {
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
        let metrics: Arc<crate::Metrics> = Arc::default();
        let shutdown = CancellationToken::new();
        let history = History::new(&self.config.history, &self.config.channels, metrics.clone())
            .map_err(ServerError::Config)?;
        let presence = Presence::new(&self.config.channels, limits.max_presence_members)
            .map_err(ServerError::Config)?;
        let broker = Broker::new(
            broker::Parts {
                requests: Requests::new(requests_config),
                queues,
                history,
                presence,
                cluster,
                metrics: Arc::clone(&metrics),
                shutdown: shutdown.clone(),
            },
            limits,
        );
        let sessions = Sessions {
            tls,
            security: Security::new(verifier, permissions, AuthThrottle::new(limits)),
            admission: Admission::new(limits),
            directory: Directory::default(),
            upstream,
            parser_limits: limits.parser(),
            unfinished: Arc::new(UnfinishedBudget::new(
                limits.unfinished_message_bytes,
                limits.message_timeout(),
            )),
            broker,
            metrics,
            commands: Commands {
                processors,
                processor_order,
                filters,
            },
            gateway,
            config: arc_swap::ArcSwap::from_pointee(self.config),
            draining: CancellationToken::new(),
            waves: std::array::from_fn(|_| shutdown.child_token()),
            shutdown,
            tasks: TaskTracker::new(),
            started: std::time::Instant::now(),
        };
        let sessions = Arc::new(sessions);
        if let Some(cluster) = &sessions.broker.cluster {
            // A disconnect another node asks for closes this node's connections too. Weak: the
            // hook is held by what `sessions` holds.
            let weak = Arc::downgrade(&sessions);
            cluster.nodes.on_disconnect(move |whom| {
                weak.upgrade().map_or(0, |sessions| {
                    sessions.directory.disconnect(Target::of(whom))
                })
            });
        }
        Ok(Server {
            sessions,
            static_files: self.static_files,
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
    sessions: Arc<Sessions>,
    /// Served over GET on the main port ([`ServerBuilder::static_file`]).
    static_files: Vec<StaticFile>,
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
        ServerHandle::new(self.sessions.clone())
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
    /// called, then shuts down gracefully: refuses new connections (`/healthz` answers 503
    /// "draining"), sends close 1012 with a retry hint to every client after what is already
    /// queued for it — spread over `server.drain_ms` — then stops the listeners, and returns
    /// once the clients are done or `server.shutdown_timeout_ms` has passed.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let shared = self.sessions;
        let metrics_listener = match (self.metrics_listener, shared.config().server.metrics_listen)
        {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) => Some(TcpListener::bind(addr).await?),
            (None, None) => None,
        };
        if let Some(cluster) = &shared.broker.cluster {
            cluster.start(&shared.broker).await?;
        }
        let signal = {
            let shared = shared.clone();
            async move {
                tokio::select! {
                    _ = shutdown => shared.begin_drain(),
                    _ = shared.draining.cancelled() => {}
                }
            }
        };
        let streams = bind_streams(&shared, self.tcp_listener, self.tls_listener).await?;
        let timeout = shared.config().server.shutdown_timeout();
        let builder = Arc::new(accept::http_builder(&shared.config().limits));
        let http_connections = TaskTracker::new();
        let main_site = Site::new(listener.local_addr()?);
        let main = accept::accept_loop(
            listener,
            http::router(
                shared.clone(),
                metrics_listener.is_none(),
                main_site,
                &self.static_files,
            ),
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
        if shared.broker.history.is_some() {
            let broker = shared.broker.clone();
            let stop = shared.shutdown.clone();
            // Expiry runs on its own clock, whatever the traffic.
            shared.tasks.spawn(async move {
                let mut ticks = tokio::time::interval(history::EXPIRY_INTERVAL);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = ticks.tick() => {}
                    }
                    if let Some(history) = &broker.history {
                        history.expire();
                    }
                }
            });
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
        if let Some(cluster) = &shared.broker.cluster {
            cluster.stop().await;
        }
        if shared.broker.history.is_some() {
            // Everything is published by now: write what is queued, then mark the store clean.
            let broker = shared.broker.clone();
            let closing = tokio::task::spawn_blocking(move || {
                if let Some(history) = &broker.history {
                    history.close();
                }
            });
            let _ = closing.await;
        }
        Ok(())
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
    shared: &Sessions,
    tcp: Option<TcpListener>,
    tls: Option<TcpListener>,
) -> Result<Streams, ServerError> {
    let transports = &shared.config().transports;
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
    async fn serve(self, shared: &Arc<Sessions>) {
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
