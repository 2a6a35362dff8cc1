//! [`Sessions`]: what every session of one server shares, in the narrow handles each part of
//! the server owns — the [`Broker`] that routes publishes, the [`Security`] checks, the
//! [`Admission`] counts, the registered [`Commands`] — plus the configuration, the upstream
//! caller, the gateway's channels and the shutdown signal. The WebSocket upgrade and the
//! byte-stream accept loops start sessions with it; the HTTP side reaches it for the upgrade.

use std::{collections::HashMap, sync::Arc};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Config, Filter, Metrics, Processor,
    broker::Broker,
    requests::gateway::Gateway,
    requests::upstream::Upstream,
    security::{Security, admission::Admission},
    transport::{budget::UnfinishedBudget, tls::Listeners},
};

/// Sessions by every session, accept loop and HTTP handler of one server (in an `Arc`).
pub(crate) struct Sessions {
    pub(crate) config: Config,
    pub(crate) parser_limits: lhttp_proto::Limits,
    /// Where publishes and subscriptions go.
    pub(crate) broker: Arc<Broker>,
    /// The broker's counters, which sessions count into too.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) commands: Commands,
    pub(crate) security: Security,
    pub(crate) admission: Admission,
    pub(crate) upstream: Upstream,
    /// The gateway routes' channels, which clients may not use, and the gateway's inbox.
    pub(crate) gateway: Gateway,
    /// Bytes held for large unfinished messages (`limits.unfinished_message_bytes`).
    pub(crate) unfinished: Arc<UnfinishedBudget>,
    /// The certificates of the TLS listeners.
    pub(crate) tls: Listeners,
    /// Cancelled when the server starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so that shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
}

/// The processors and filters registered with the server builder. Read-only after build, so
/// shared without a lock.
pub(crate) struct Commands {
    /// Command -> processor.
    pub(crate) processors: HashMap<String, Arc<dyn Processor>, foldhash::quality::RandomState>,
    /// Every processor in registration order, for the open and close hooks.
    pub(crate) processor_order: Vec<Arc<dyn Processor>>,
    /// Built-in filters, then user filters in registration order.
    pub(crate) filters: Vec<Arc<dyn Filter>>,
}
