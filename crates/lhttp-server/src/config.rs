//! [`Config`]: everything an operator can set, with safe defaults.
//!
//! The same structure is read from the TOML file by `lhttpd` (see `config/lhttpd.toml` for the
//! commented default) and built in code by programs that embed the server.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            shutdown_timeout_ms: 5_000,
        }
    }
}

impl ServerConfig {
    /// [`ServerConfig::shutdown_timeout_ms`] as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
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

    /// Checks values that would make the server unusable.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_message_size", self.max_message_size),
            ("max_headers", self.max_headers),
            ("max_subscriptions", self.max_subscriptions),
            ("max_connections", self.max_connections),
            ("outbound_queue", self.outbound_queue),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("limits.{name} must be greater than 0"));
            }
        }
        if self.outbound_queue_bytes < self.max_message_size {
            return Err(
                "limits.outbound_queue_bytes must be at least limits.max_message_size".into(),
            );
        }
        Ok(())
    }
}
