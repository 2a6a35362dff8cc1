//! The nodes of a cluster, as the server API and the admin page show them, and what one node
//! asks of all: on one NATS subject (`<prefix>.nodes`),
//!
//! - every node says every `cluster.presence_interval_ms` who it is and how busy it is (a
//!   [`NodeStatus`]); a node not heard of for `cluster.presence_timeout_ms` is dropped from the
//!   list;
//! - a node asks every other to disconnect a user or a client (`POST /server/disconnect`),
//!   which each does on its own connections through the hook the server installs
//!   ([`Nodes::on_disconnect`]: the broker knows no sessions).
//!
//! What other nodes send is checked before it is held: at most [`MAX_NODES`] nodes, names and
//! versions of bounded length, announcements of bounded size. NATS is inside the cluster's
//! trust boundary (it carries every channel's traffic too); its subject prefix and credentials
//! keep others out.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock, PoisonError, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::broker::Broker;

/// Most other nodes held in the list: a cluster is a few nodes to a few hundred.
pub(crate) const MAX_NODES: usize = 1024;

/// Largest announcement read; a status is about 300 bytes, a disconnect carries one user name
/// (bounded by the token size, itself at most a few KiB).
const MAX_ANNOUNCEMENT: usize = 16 * 1024;

/// Longest node id or version held (this node's ids are 16 characters).
const MAX_NAME: usize = 64;

/// How one node is doing, as it says itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeStatus {
    pub(crate) node: String,
    pub(crate) version: String,
    pub(crate) uptime_secs: u64,
    pub(crate) connections: u64,
    pub(crate) channels: u64,
    pub(crate) subscriptions: u64,
    /// Totals since the node started.
    pub(crate) messages_received: u64,
    pub(crate) deliveries: u64,
}

/// Whose connections a disconnect closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Disconnect {
    User(String),
    Client(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Announcement {
    Status(NodeStatus),
    Disconnect { from: String, whom: Disconnect },
}

type DisconnectHook = Box<dyn Fn(&Disconnect) -> usize + Send + Sync>;

/// The other nodes heard of, and what to do when one asks for a disconnect.
#[derive(Default)]
pub(crate) struct Nodes {
    /// Node id -> its last status and when it came. Locked briefly by the subject's task
    /// (one writer) and by API reads; never across an `.await`.
    heard: Mutex<HashMap<String, (NodeStatus, Instant)>>,
    /// Set once when the server is built.
    on_disconnect: OnceLock<DisconnectHook>,
}

impl Nodes {
    /// Installs what a disconnect asked by another node does on this one.
    pub(crate) fn on_disconnect(
        &self,
        hook: impl Fn(&Disconnect) -> usize + Send + Sync + 'static,
    ) {
        let _ = self.on_disconnect.set(Box::new(hook));
    }

    /// The other nodes heard of within `timeout`, by id.
    pub(crate) fn others(&self, timeout: Duration) -> Vec<NodeStatus> {
        let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        let mut others: Vec<NodeStatus> = heard
            .values()
            .filter(|(_, at)| at.elapsed() < timeout)
            .map(|(status, _)| status.clone())
            .collect();
        others.sort_by(|a, b| a.node.cmp(&b.node));
        others
    }

    fn heard(&self, status: NodeStatus, now: Instant, timeout: Duration) {
        if status.node.len() > MAX_NAME || status.version.len() > MAX_NAME {
            return;
        }
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.retain(|_, (_, at)| now.duration_since(*at) < timeout);
        if heard.len() < MAX_NODES || heard.contains_key(&status.node) {
            heard.insert(status.node.clone(), (status, now));
        }
    }
}

/// This node's status now.
pub(crate) fn own_status(broker: &Broker, node: &str, started: Instant) -> NodeStatus {
    let metrics = &broker.metrics;
    let opened = metrics.connections_opened.load(Relaxed);
    let closed = metrics.connections_closed.load(Relaxed);
    NodeStatus {
        node: node.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: started.elapsed().as_secs(),
        connections: opened.saturating_sub(closed),
        channels: broker.hub.channel_count() as u64,
        subscriptions: broker.hub.subscription_count() as u64,
        messages_received: metrics.messages_received.load(Relaxed),
        deliveries: metrics.deliveries.load(Relaxed),
    }
}

/// Asks every other node to disconnect `whom` (this node does its own itself).
pub(crate) async fn ask_disconnect(broker: &Broker, whom: Disconnect) {
    if let Some(cluster) = &broker.cluster {
        let from = cluster.node_id().to_owned();
        cluster
            .send_to_nodes(encode(&Announcement::Disconnect { from, whom }))
            .await;
    }
}

fn encode(announcement: &Announcement) -> Bytes {
    Bytes::from(serde_json::to_vec(announcement).unwrap_or_default())
}

/// Says this node's status on every beat and hears the others', until shutdown.
pub(crate) async fn run(broker: std::sync::Arc<Broker>, client: Client) {
    let Some(cluster) = broker.cluster.as_ref() else {
        return;
    };
    let mut subscription = match client.subscribe(cluster.nodes_subject.clone()).await {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::warn!(%error, "cluster: cannot subscribe to the node list; other nodes are not listed, nor do their disconnects reach this one");
            return;
        }
    };
    let (interval, timeout) = cluster.presence_timing;
    let mut beats = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = beats.tick() => {
                let status = own_status(&broker, cluster.node_id(), cluster.started);
                cluster.send_to_nodes(encode(&Announcement::Status(status))).await;
            }
            message = subscription.next() => {
                let Some(message) = message else { return };
                if message.payload.len() > MAX_ANNOUNCEMENT {
                    continue;
                }
                match serde_json::from_slice::<Announcement>(&message.payload) {
                    Ok(Announcement::Status(status)) => {
                        cluster.nodes.heard(status, Instant::now(), timeout);
                    }
                    Ok(Announcement::Disconnect { from, whom }) => {
                        let closed = cluster.nodes.on_disconnect.get().map_or(0, |hook| hook(&whom));
                        tracing::info!(from = %from.chars().take(MAX_NAME).collect::<String>(), ?whom, closed, "cluster: disconnect asked by another node");
                    }
                    Err(error) => tracing::debug!(%error, "cluster: unreadable node announcement"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(node: &str) -> NodeStatus {
        NodeStatus {
            node: node.into(),
            version: "1".into(),
            uptime_secs: 0,
            connections: 0,
            channels: 0,
            subscriptions: 0,
            messages_received: 0,
            deliveries: 0,
        }
    }

    #[test]
    fn the_list_is_bounded_and_forgets_nodes_gone_quiet() {
        let nodes = Nodes::default();
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        for i in 0..MAX_NODES + 10 {
            nodes.heard(status(&format!("n{i:05}")), now, timeout);
        }
        assert_eq!(nodes.others(timeout).len(), MAX_NODES);
        // A known node is still heard when the list is full; names too long never are.
        nodes.heard(
            NodeStatus {
                connections: 7,
                ..status("n00000")
            },
            now,
            timeout,
        );
        assert_eq!(nodes.others(timeout)[0].connections, 7);
        nodes.heard(status(&"x".repeat(MAX_NAME + 1)), now, timeout);
        assert!(
            nodes
                .others(timeout)
                .iter()
                .all(|s| s.node.len() <= MAX_NAME)
        );
        // Quiet for the timeout: gone.
        assert!(nodes.others(Duration::ZERO).is_empty());
    }
}
