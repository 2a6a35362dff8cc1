//! [`Config`]: everything an operator can set, with safe defaults.
//!
//! The same structure is read from the TOML file by `lhttpd` (see `config/lhttpd.toml` for the
//! commented default) and built in code by programs that embed the server.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

/// Largest count that sizes a queue or a semaphore (connections, queued messages, calls in
/// flight). The runtime's own ceiling is far above any real use but below what a TOML integer
/// can say; beyond it building the server would panic instead of reporting the value.
pub const MAX_COUNT: usize = u32::MAX as usize;

/// Refuses `value` for `name` when it is above [`MAX_COUNT`].
fn check_count(name: &str, value: usize) -> Result<(), String> {
    if value > MAX_COUNT {
        return Err(format!("{name} must be at most {MAX_COUNT}"));
    }
    Ok(())
}

/// Server configuration. Every field has a default; unknown keys are errors, so that a typo in
/// a config file is reported instead of silently ignored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to listen and how to stop.
    pub server: ServerConfig,
    /// What one client can make the server hold.
    pub limits: Limits,
    /// HTTP back ends that clients may call with the `upstream` header.
    pub upstream: UpstreamConfig,
    /// Sharing channels with other nodes over NATS; off unless `nats` lists a server.
    pub cluster: ClusterConfig,
}

/// `[cluster]`: several nodes share channels through NATS.
///
/// With an empty `nats` list (the default) the node runs alone and no NATS code runs at all.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); several are tried in turn, and
    /// the client also learns the other members of a NATS cluster from the one it reaches.
    pub nats: Vec<String>,
    /// First token(s) of every subject this node uses: channel `c` is `<prefix>.ch.<c escaped>`.
    /// Nodes that should share channels use the same prefix; different prefixes on one NATS
    /// keep deployments apart.
    pub subject_prefix: String,
    /// NATS authentication token.
    pub token: Option<String>,
    /// NATS user name (needs `password`).
    pub user: Option<String>,
    /// NATS password (needs `user`).
    pub password: Option<String>,
    /// NATS credentials file (JWT and NKey seed), as `nsc` writes it.
    pub credentials_file: Option<std::path::PathBuf>,
    /// Refuse to talk to NATS without TLS.
    pub tls_required: bool,
    /// PEM file of the certificate authority that signed the NATS servers' certificates (for a
    /// private CA; the system's roots are used otherwise).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for NATS servers that verify clients (needs `tls_client_key`).
    pub tls_client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_client_cert`.
    pub tls_client_key: Option<std::path::PathBuf>,
    /// Most messages waiting to be sent to NATS, and most messages per channel received from
    /// NATS and waiting to be delivered here. Beyond it messages are dropped and counted
    /// (`lhttp_cluster_dropped_total`, `lhttp_cluster_slow_consumers_total`), never buffered.
    pub max_pending: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: Vec::new(),
            subject_prefix: "lhttp".to_owned(),
            token: None,
            user: None,
            password: None,
            credentials_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            max_pending: 4096,
        }
    }
}

impl ClusterConfig {
    /// True when a NATS server is configured.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// Checks values that would make the cluster unusable or let subjects collide.
    pub fn validate(&self) -> Result<(), String> {
        for url in &self.nats {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("cluster.nats URL {url:?}: {e}"))?;
        }
        let prefix = &self.subject_prefix;
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !prefix.split('.').all(token_ok) {
            return Err(format!(
                "cluster.subject_prefix {prefix:?}: dot-separated words of letters, digits, '_' and '-'"
            ));
        }
        if self.tls_client_cert.is_some() != self.tls_client_key.is_some() {
            return Err("cluster.tls_client_cert and cluster.tls_client_key go together".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("cluster.user and cluster.password go together".into());
        }
        if self.max_pending == 0 {
            return Err("cluster.max_pending must be greater than 0".into());
        }
        check_count("cluster.max_pending", self.max_pending)?;
        Ok(())
    }
}

/// `[upstream]`: which HTTP back ends clients may call, and how much of that they may do.
///
/// Closed by default: with no `allow` prefix and no route, every `upstream` header is refused
/// with 403, so no client can make the server call a URL of its choosing.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// URL prefixes a client may name (`upstream:POST http://127.0.0.1:9000/record`). A URL is
    /// allowed when its scheme, host and port equal the prefix's and its path starts with the
    /// prefix's path.
    pub allow: Vec<String>,
    /// Named back ends (`upstream:POST record` calls the URL of route `record`).
    pub routes: std::collections::BTreeMap<String, String>,
    /// How long a call may take, connection included, in milliseconds (504 beyond it).
    pub timeout_ms: u64,
    /// Calls one connection may have in flight (429 beyond it).
    pub max_in_flight_per_connection: usize,
    /// Calls the whole server may have in flight (503 beyond it).
    pub max_in_flight: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            allow: Vec::new(),
            routes: std::collections::BTreeMap::new(),
            timeout_ms: 10_000,
            max_in_flight_per_connection: 16,
            max_in_flight: 1024,
        }
    }
}

impl UpstreamConfig {
    /// [`UpstreamConfig::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks values that would make upstream calls unusable or unsafe.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 || self.max_in_flight == 0 || self.max_in_flight_per_connection == 0
        {
            return Err(
                "upstream.timeout_ms and the upstream.max_in_flight limits must be greater than 0"
                    .into(),
            );
        }
        check_count("upstream.max_in_flight", self.max_in_flight)?;
        check_count(
            "upstream.max_in_flight_per_connection",
            self.max_in_flight_per_connection,
        )?;
        for prefix in self.allow.iter().chain(self.routes.values()) {
            crate::upstream::Target::parse(prefix)
                .map_err(|e| format!("upstream URL {prefix:?}: {e}"))?;
        }
        for name in self.routes.keys() {
            if name.is_empty() || name.contains(['/', ':', ' ']) {
                return Err(format!("upstream route name {name:?} must be a plain word"));
            }
        }
        Ok(())
    }
}

/// `[server]`: the listening socket and shutdown.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the one port that serves WebSocket, `/publish`, `/healthz`, `/metrics` and
    /// the chat page. Loopback by default: exposing the server is a decision.
    pub listen: SocketAddr,
    /// How long a graceful shutdown waits for clients to receive what is queued for them
    /// before the process exits anyway, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Key that `POST /publish` requires as `Authorization: Bearer <key>`. Without a key,
    /// `POST /publish` is accepted from loopback addresses only.
    pub api_key: Option<String>,
    /// Origins (`https://chat.example.com`) whose pages may open WebSocket connections. Empty:
    /// any origin, as for a local demo; set it when browsers reach the server from the web, so
    /// that another site cannot open connections with its visitors' cookies.
    pub allowed_origins: Vec<String>,
    /// The server pings each client this often, in milliseconds.
    pub ping_interval_ms: u64,
    /// A client from which nothing (not even a pong) arrived for this long is closed with code
    /// 1001 "idle timeout", in milliseconds.
    pub idle_timeout_ms: u64,
    /// A second address that serves `GET /metrics` and `GET /healthz` (and nothing else), for
    /// a monitoring network. When set, the main port no longer serves them (404). Off by
    /// default: the main port serves both.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            shutdown_timeout_ms: 5_000,
            api_key: None,
            allowed_origins: Vec::new(),
            ping_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            metrics_listen: None,
        }
    }
}

impl ServerConfig {
    /// [`ServerConfig::shutdown_timeout_ms`] as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// Checks values that would make the server unusable.
    pub fn validate(&self) -> Result<(), String> {
        if self.ping_interval_ms == 0 || self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(
                "server.ping_interval_ms must be > 0 and below server.idle_timeout_ms".into(),
            );
        }
        if self.api_key.as_deref().is_some_and(|k| k.len() < 16) {
            return Err("server.api_key must be at least 16 characters".into());
        }
        Ok(())
    }
}

/// `[limits]`: bounds on everything a client controls. What happens at each limit is in
/// docs/protocol.md.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest lhttp message, in bytes, over WebSocket (close 1009 beyond it) and in
    /// `POST /publish` (413 beyond it).
    pub max_message_size: usize,
    /// Most headers in one message (400 beyond it).
    pub max_headers: usize,
    /// Most channels one connection may be subscribed to at once (429 beyond it).
    pub max_subscriptions: usize,
    /// Most simultaneous WebSocket connections (503 to the upgrade request beyond it).
    pub max_connections: usize,
    /// Most messages queued for one client that is not reading fast enough. When a message
    /// would exceed it, the client is disconnected with close code 1008 ("slow consumer").
    pub outbound_queue: usize,
    /// Most bytes queued for one client; same consequence as `outbound_queue`.
    pub outbound_queue_bytes: usize,
    /// Messages one WebSocket connection may send per second, on average (a token bucket);
    /// beyond it a message is not processed and is answered with an error, status 429.
    /// 0 turns the limit off (benchmarks that publish as fast as they can from one connection).
    pub messages_per_second: u64,
    /// Messages a connection may send at once above the average rate (the bucket's size).
    pub message_burst: u64,
    /// A connection that has this many messages refused for its rate within
    /// `rate_limit_window_ms` is closed with code 1008 "message rate limit exceeded": it keeps
    /// sending without listening to the 429 answers. 0: never close, only refuse.
    pub rate_limit_close_after: u64,
    /// The window of `rate_limit_close_after`, in milliseconds.
    pub rate_limit_window_ms: u64,
    /// Most simultaneous WebSocket connections from one IP address (IPv6: one /64 network);
    /// further upgrade requests get HTTP 429. 0 turns the limit off (behind a reverse proxy on
    /// the same machine every client has the proxy's address).
    pub max_connections_per_ip: usize,
    /// A new TCP connection must send its complete request head (the WebSocket handshake or an
    /// HTTP request) within this many milliseconds, and a kept-alive HTTP connection its next
    /// request head within as long after the previous response; otherwise it is closed
    /// (slow-loris clients).
    pub handshake_timeout_ms: u64,
    /// Most header lines in an HTTP request, the WebSocket handshake included (431 beyond it).
    pub http_max_headers: usize,
    /// Most bytes in an HTTP request head, start line and headers (431 beyond it).
    pub http_max_header_bytes: usize,
    /// A `POST /publish` body must arrive within this many milliseconds of its head (408
    /// beyond it).
    pub http_body_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024,
            max_headers: 64,
            max_subscriptions: 1024,
            max_connections: 10_000,
            outbound_queue: 4096,
            outbound_queue_bytes: 4 * 1024 * 1024,
            messages_per_second: 10_000,
            message_burst: 20_000,
            rate_limit_close_after: 1000,
            rate_limit_window_ms: 10_000,
            max_connections_per_ip: 1000,
            handshake_timeout_ms: 10_000,
            http_max_headers: 100,
            http_max_header_bytes: 16 * 1024,
            http_body_timeout_ms: 10_000,
        }
    }
}

impl Limits {
    /// The parser limits these imply.
    pub(crate) fn parser(&self) -> lhttp_proto::Limits {
        lhttp_proto::Limits {
            max_size: self.max_message_size,
            max_headers: self.max_headers,
            ..lhttp_proto::Limits::default()
        }
    }

    /// [`Limits::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Limits::http_body_timeout_ms`] as a duration.
    pub fn http_body_timeout(&self) -> Duration {
        Duration::from_millis(self.http_body_timeout_ms)
    }

    /// Checks values that would make the server unusable.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_message_size", self.max_message_size),
            ("max_headers", self.max_headers),
            ("max_subscriptions", self.max_subscriptions),
            ("max_connections", self.max_connections),
            ("outbound_queue", self.outbound_queue),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
            ("rate_limit_window_ms", self.rate_limit_window_ms as usize),
            ("handshake_timeout_ms", self.handshake_timeout_ms as usize),
            ("http_max_headers", self.http_max_headers),
            ("http_body_timeout_ms", self.http_body_timeout_ms as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("limits.{name} must be greater than 0"));
            }
        }
        check_count("limits.max_connections", self.max_connections)?;
        check_count("limits.outbound_queue", self.outbound_queue)?;
        if self.messages_per_second > 0 && self.message_burst == 0 {
            return Err("limits.message_burst must be at least 1 when a rate is set".into());
        }
        // Browsers send handshakes of several hundred bytes, with cookies a few KiB.
        if self.http_max_header_bytes < 1024 {
            return Err("limits.http_max_header_bytes must be at least 1024".into());
        }
        if self.outbound_queue_bytes < self.max_message_size {
            return Err(
                "limits.outbound_queue_bytes must be at least limits.max_message_size".into(),
            );
        }
        Ok(())
    }
}
