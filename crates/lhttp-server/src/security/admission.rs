//! [`Admission`]: the connection counts a new connection must fit in before the server spends
//! anything on it — `limits.max_connections` and `limits.max_connections_per_ip` for lhttp
//! connections on every transport, `limits.max_http_connections` and
//! `limits.max_http_connections_per_ip` for TCP connections still speaking HTTP — and the
//! connection ids.

use std::sync::{Arc, atomic::AtomicU64};

use tokio::sync::Semaphore;

use crate::{config::Limits, security::peers::ConnectionsPerIp, transport::ConnectionId};

/// The places connections take; shared by every accept loop and the WebSocket upgrade.
pub(crate) struct Admission {
    /// One permit per open lhttp connection (`limits.max_connections`). An `Arc` because a
    /// session holds its owned permit until it ends.
    pub(crate) connection_slots: Arc<Semaphore>,
    max_connections: usize,
    /// lhttp connections per client address (`limits.max_connections_per_ip`).
    pub(crate) connections_per_ip: Arc<ConnectionsPerIp>,
    /// One permit per TCP connection still speaking HTTP (`limits.max_http_connections`),
    /// taken at accept and given back when it ends or becomes a WebSocket.
    pub(crate) http_connection_slots: Arc<Semaphore>,
    max_http_connections: usize,
    /// The same per client address (`limits.max_http_connections_per_ip`).
    pub(crate) http_connections_per_ip: Arc<ConnectionsPerIp>,
    next_connection_id: AtomicU64,
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Self {
        Admission {
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            max_connections: limits.max_connections,
            connections_per_ip: Arc::new(ConnectionsPerIp::new(limits.max_connections_per_ip)),
            http_connection_slots: Arc::new(Semaphore::new(limits.max_http_connections)),
            max_http_connections: limits.max_http_connections,
            http_connections_per_ip: Arc::new(ConnectionsPerIp::new(
                limits.max_http_connections_per_ip,
            )),
            next_connection_id: AtomicU64::new(1),
        }
    }

    /// A connection id never given before by this server.
    pub(crate) fn next_id(&self) -> ConnectionId {
        ConnectionId(
            self.next_connection_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Open lhttp connections.
    pub(crate) fn connection_count(&self) -> usize {
        self.max_connections - self.connection_slots.available_permits()
    }

    /// Open TCP connections that speak HTTP.
    pub(crate) fn http_connection_count(&self) -> usize {
        self.max_http_connections - self.http_connection_slots.available_permits()
    }
}
