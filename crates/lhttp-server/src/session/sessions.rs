//! [`Sessions`]: what every session of one server shares, in the narrow handles each part of
//! the server owns — the [`Broker`] that routes publishes, the [`Security`] checks, the
//! [`Admission`] counts, the registered [`Commands`] — plus the configuration, the upstream
//! caller, the gateway's channels and the shutdown signal. The WebSocket upgrade and the
//! byte-stream accept loops start sessions with it; the HTTP side reaches it for the upgrade.

use std::{collections::HashMap, sync::Arc};

use arc_swap::{ArcSwap, Guard};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Config, Filter, Metrics, Processor,
    broker::Broker,
    requests::gateway::Gateway,
    requests::upstream::Upstream,
    security::{Security, admission::Admission},
    session::directory::Directory,
    transport::{budget::UnfinishedBudget, tls::Listeners},
};

/// Sessions by every session, accept loop and HTTP handler of one server (in an `Arc`).
pub(crate) struct Sessions {
    /// The settings in force: swapped whole by a reload ([`crate::reload`]), which changes
    /// only the settings that can change while serving. Read with [`Sessions::config`].
    pub(crate) config: ArcSwap<Config>,
    pub(crate) parser_limits: lhttp_proto::Limits,
    /// Where publishes and subscriptions go.
    pub(crate) broker: Arc<Broker>,
    /// The broker's counters, which sessions count into too.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) commands: Commands,
    pub(crate) security: Security,
    pub(crate) admission: Admission,
    /// Open connections by user and client id, for the server API's disconnect.
    pub(crate) directory: Directory,
    pub(crate) upstream: Upstream,
    /// The gateway routes' channels, which clients may not use, and the gateway's inbox.
    pub(crate) gateway: Gateway,
    /// Bytes held for large unfinished messages (`limits.unfinished_message_bytes`).
    pub(crate) unfinished: Arc<UnfinishedBudget>,
    /// The certificates of the TLS listeners.
    pub(crate) tls: Listeners,
    /// Cancelled when a graceful shutdown begins: `/healthz` says "draining" and new
    /// connections are refused from then on.
    pub(crate) draining: CancellationToken,
    /// The moments client connections are closed at during the drain: each connection waits
    /// on one of them (by its id); they are cancelled one after another over
    /// `server.drain_ms`. Children of `shutdown`.
    pub(crate) waves: [CancellationToken; DRAIN_WAVES],
    /// Cancelled when the drain is over (at once without `server.drain_ms`): the listeners
    /// stop and every connection still open is closed.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so that shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// When the server was built, for its uptime.
    pub(crate) started: std::time::Instant,
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

/// How many moments a drain closes connections at: enough to spread a reconnecting crowd,
/// few enough that every connection waits on a plain token (no timer of its own).
pub(crate) const DRAIN_WAVES: usize = 16;

/// The retry hints a draining server gives in its close frames (code 1012), one per
/// connection by its id: clients wait that long before reconnecting (the SDKs do), so a
/// crowd closed in one wave comes back spread over a few seconds.
const RETRY_HINTS: [&str; 8] = [
    "server restarting; retry in 250 ms",
    "server restarting; retry in 750 ms",
    "server restarting; retry in 1250 ms",
    "server restarting; retry in 1750 ms",
    "server restarting; retry in 2250 ms",
    "server restarting; retry in 2750 ms",
    "server restarting; retry in 3250 ms",
    "server restarting; retry in 3750 ms",
];

impl Sessions {
    /// The settings in force now. A short-lived guard: what outlives a message or a connection
    /// set-up copies what it needs out of it.
    pub(crate) fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// Begins a graceful shutdown (once): `/healthz` answers 503 "draining" and new connections
    /// are refused at once; client connections are closed wave after wave over
    /// `server.drain_ms`; then the listeners stop.
    pub(crate) fn begin_drain(self: &Arc<Self>) {
        if self.draining.is_cancelled() {
            return;
        }
        self.draining.cancel();
        let drain_ms = self.config().server.drain_ms;
        let drain = std::time::Duration::from_millis(drain_ms);
        let runtime = tokio::runtime::Handle::try_current();
        let (false, Ok(runtime)) = (drain.is_zero(), runtime) else {
            self.shutdown.cancel();
            return;
        };
        tracing::info!(drain_ms, "draining: closing clients");
        let sessions = self.clone();
        runtime.spawn(async move {
            let step = drain / DRAIN_WAVES as u32;
            for wave in &sessions.waves {
                wave.cancel();
                tokio::time::sleep(step).await;
            }
            sessions.shutdown.cancel();
        });
    }

    /// The drain wave connection `id` is closed in.
    pub(crate) fn wave_of(&self, id: u64) -> &CancellationToken {
        &self.waves[(spread(id) % DRAIN_WAVES as u64) as usize]
    }
}

/// The close reason a draining server gives connection `id`: a retry hint.
pub(crate) fn retry_hint(id: u64) -> &'static str {
    RETRY_HINTS[(spread(id) >> 8) as usize % RETRY_HINTS.len()]
}

/// Connection ids are consecutive: mixed, so that neighbours fall in different waves and hints.
fn spread(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
}
