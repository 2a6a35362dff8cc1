//! [`ServerHandle`]: the running server as code uses it — processors (through
//! [`Context::server`](crate::Context::server)) and the program that embeds it: publish, read
//! its state and counters, connect in process, reload certificates, stop it.

use std::sync::Arc;

use lhttp_proto::Message;

use crate::{
    Config, Hub, Metrics, PublishReport, Rejection,
    broker::{Broker, cluster::Cluster},
    metrics::Gauges,
    requests::queue::Publisher,
    requests::upstream::Upstream,
    session::sessions::Sessions,
};

/// Uses a running server from code: publish as `POST /publish` does, read its state, stop it.
/// Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    sessions: Arc<Sessions>,
}

impl ServerHandle {
    pub(crate) fn new(sessions: Arc<Sessions>) -> Self {
        ServerHandle { sessions }
    }

    /// What the server's sessions share, for the server's own parts.
    pub(crate) fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    fn broker(&self) -> &Broker {
        &self.sessions.broker
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
        self.broker().publish_as(message, Publisher::Http)
    }

    /// Publishes `message` to `channel` only, whatever its `publish` header says; returns the
    /// number of local subscribers and queue groups that took it. Refused as
    /// [`ServerHandle::publish`] is.
    pub fn publish_to(&self, channel: &str, message: &Message) -> Result<usize, Rejection> {
        self.broker().publish_to(channel, message, Publisher::Http)
    }

    /// `None` on a single node; on a cluster node, whether it is connected to NATS now.
    pub fn cluster_connected(&self) -> Option<bool> {
        self.broker().cluster.as_ref().map(Cluster::is_connected)
    }

    /// True when this node holds a NATS subscription for `channel` that NATS has confirmed
    /// (it has local subscribers and a cluster is configured).
    pub fn cluster_subscribed(&self, channel: &str) -> bool {
        self.broker()
            .cluster
            .as_ref()
            .is_some_and(|c| c.is_subscribed(channel))
    }

    /// Channels this node holds a NATS subscription for; 0 on a single node.
    pub fn cluster_subscription_count(&self) -> usize {
        self.broker()
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
        super::accept::in_process(&self.sessions)
    }

    /// Reads the certificate files of every TLS listener again (`lhttpd` does on SIGHUP); new
    /// connections get the new certificates. On an error the old certificate stays in use and
    /// the error says which file is at fault.
    pub fn reload_tls(&self) -> Result<(), String> {
        let tls = &self.sessions.tls;
        for server in [&tls.main, &tls.stream].into_iter().flatten() {
            server.log_reload(false)?;
        }
        Ok(())
    }

    /// Puts the settings of `config` that can change while serving in force (`lhttpd` does on
    /// SIGHUP with its configuration read again): keys and rules of `[auth]`, the upstream
    /// allow-list and routes, the API key and allowed origins, and the limits of connections
    /// ([`crate::RELOADABLE`] lists them). The others keep the values the server started
    /// with and are named in [`crate::Reloaded::not_applied`] (and the log). A configuration that would not
    /// start is refused whole: nothing changes.
    pub fn reload(&self, config: Config) -> Result<crate::Reloaded, crate::ServerError> {
        super::reload::reload(&self.sessions, config)
    }

    /// The upstream caller, to call configured routes from code.
    pub fn upstream(&self) -> &Upstream {
        &self.sessions.upstream
    }

    /// The subscription table.
    pub fn hub(&self) -> &Hub {
        &self.broker().hub
    }

    /// Queue-group memberships over all groups.
    pub fn queue_member_count(&self) -> usize {
        self.broker().queues.member_count()
    }

    /// Requests waiting for their terminal answer.
    pub fn pending_request_count(&self) -> usize {
        self.broker().requests.pending_count()
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.sessions.metrics
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.sessions.admission.connection_count()
    }

    /// Open WebSocket connections from `ip` (from its /64 network for IPv6), as counted for
    /// `limits.max_connections_per_ip`; 0 when that limit is off.
    pub fn connections_from(&self, ip: std::net::IpAddr) -> usize {
        self.sessions.admission.connections_per_ip.count(ip)
    }

    /// Open TCP connections that speak HTTP (not upgraded), as counted for
    /// `limits.max_http_connections`.
    pub fn http_connection_count(&self) -> usize {
        self.sessions.admission.http_connection_count()
    }

    /// Client addresses (IPv6: /64 networks) with open WebSocket connections, as counted for
    /// `limits.max_connections_per_ip`; 0 when that limit is off.
    pub fn connected_addresses(&self) -> usize {
        self.sessions.admission.connections_per_ip.addresses()
    }

    /// The configuration the server runs with now (after any [`ServerHandle::reload`]).
    pub fn config(&self) -> Arc<Config> {
        self.sessions.config.load_full()
    }

    /// Closes every connection on this node authenticated as `user` (close 4001
    /// "disconnected by the server", after what is queued for it; the SDKs do not reconnect),
    /// as `POST /server/disconnect` does; returns how many.
    pub fn disconnect_user(&self, user: &str) -> usize {
        let target = crate::session::directory::Target::User(user);
        self.sessions.directory.disconnect(target)
    }

    /// Starts a graceful shutdown, as the `shutdown` future of [`Server::run`](crate::Server::run) does.
    pub fn shutdown(&self) {
        self.sessions.begin_drain();
    }

    /// True once shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.sessions.draining.is_cancelled()
    }

    /// Every metric in the Prometheus text format, as served at `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        let mut out = self.sessions.metrics.render(&self.gauges());
        if let Some(cluster) = &self.broker().cluster {
            cluster.render(&mut out);
        }
        out
    }

    /// What the server holds now, as `/metrics` and `/server/info` show it.
    pub(crate) fn gauges(&self) -> Gauges {
        let hub = &self.broker().hub;
        let history = self.broker().history.as_ref();
        let presence = self.broker().presence.as_ref();
        Gauges {
            connections: self.connection_count() as u64,
            http_connections: self.http_connection_count() as u64,
            unfinished_message_bytes: self.sessions.unfinished.held() as u64,
            channels: hub.channel_count() as u64,
            subscriptions: hub.subscription_count() as u64,
            inboxes: self.broker().requests.inbox_count() as u64,
            pending_requests: self.broker().requests.pending_count() as u64,
            queue_groups: self.broker().queues.group_count() as u64,
            queue_members: self.broker().queues.member_count() as u64,
            queued_bytes: self.broker().queues.queued_bytes() as u64,
            history_channels: history.map_or(0, |h| h.stream_count() as u64),
            history_bytes: history.map_or(0, |h| h.held_bytes() as u64),
            presence_members: presence.map_or(0, |p| p.member_count() as u64),
            presence_rooms: presence.map_or(0, |p| p.room_count() as u64),
            presence_nodes: presence.map_or(0, |p| p.node_count() as u64),
        }
    }
}
