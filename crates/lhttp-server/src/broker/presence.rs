//! Presence across a cluster: every node tells the others, on one NATS subject
//! (`<prefix>.presence`), about its own members, and keeps theirs beside its own in
//! [`Presence`](crate::pubsub::presence::Presence).
//!
//! - **Changes.** Each local join and leave is numbered (this node's sequence) and sent at
//!   once. All of one node's announcements travel on one subject over one connection, so the
//!   others receive them in order; a node applies a change only when it is the next number it
//!   expects from its sender.
//! - **Heartbeats.** Every `cluster.presence_interval_ms` a node sends its current number. A
//!   receiver whose view is behind (an announcement was dropped — NATS was away, the queue was
//!   full — or it started after the sender) asks for a snapshot: the sender's members in
//!   parts, numbered as of the moment they were taken, which replace the receiver's view.
//! - **Ghosts.** A node heard of for none of this during `cluster.presence_timeout_ms` —
//!   dead, or cut off from NATS — is dropped with its members, and local subscribers get their
//!   `leave` messages; its heartbeats bring them back through a snapshot.
//!
//! Announcements are JSON; what another node sends is checked against the same bounds as
//! local members (`limits.max_presence_info`, the member limit) before it is held.

use std::{borrow::Cow, sync::Arc, time::Instant};

use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{
    broker::Broker,
    metrics::add,
    pubsub::presence::{Applied, Member},
};

/// Members per snapshot part: a few tens of kilobytes, well under NATS's payload limit.
const PART: usize = 200;

/// Longest client id or user another node may announce (this node's own ids are 16 bytes,
/// users are bounded by the token size).
const MAX_NAME: usize = 1024;

/// One announcement on the presence subject. Strings are borrowed from the payload where
/// JSON allows it and owned where it had to unescape them (a quote in an info).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Announcement<'a> {
    Join {
        #[serde(borrow)]
        node: Cow<'a, str>,
        seq: u64,
        #[serde(borrow)]
        channel: Cow<'a, str>,
        #[serde(borrow)]
        client: Cow<'a, str>,
        #[serde(borrow)]
        user: Cow<'a, str>,
        #[serde(borrow)]
        info: Cow<'a, str>,
    },
    Leave {
        #[serde(borrow)]
        node: Cow<'a, str>,
        seq: u64,
        #[serde(borrow)]
        channel: Cow<'a, str>,
        #[serde(borrow)]
        client: Cow<'a, str>,
    },
    Beat {
        #[serde(borrow)]
        node: Cow<'a, str>,
        seq: u64,
    },
    /// Asks node `of` for a snapshot.
    Want {
        #[serde(borrow)]
        of: Cow<'a, str>,
    },
    Part {
        #[serde(borrow)]
        node: Cow<'a, str>,
        seq: u64,
        last: bool,
        #[serde(borrow)]
        members: Vec<WireMember<'a>>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct WireMember<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    client: Cow<'a, str>,
    #[serde(borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    info: Cow<'a, str>,
}

fn encode(announcement: &Announcement<'_>) -> Bytes {
    serde_json::to_vec(announcement)
        .expect("announcements serialize")
        .into()
}

/// Tells the other nodes that local `member` joined `channel` (change `seq`).
pub(crate) fn announce_join(broker: &Broker, seq: u64, channel: &str, member: &Member) {
    if let Some(cluster) = &broker.cluster {
        cluster.send_presence(encode(&Announcement::Join {
            node: cluster.node_id().into(),
            seq,
            channel: channel.into(),
            client: (&*member.client).into(),
            user: (&*member.user).into(),
            info: (&*member.info).into(),
        }));
    }
}

/// Tells the other nodes that local client `client` left `channel` (change `seq`).
pub(crate) fn announce_leave(broker: &Broker, seq: u64, channel: &str, client: &str) {
    if let Some(cluster) = &broker.cluster {
        cluster.send_presence(encode(&Announcement::Leave {
            node: cluster.node_id().into(),
            seq,
            channel: channel.into(),
            client: client.into(),
        }));
    }
}

/// Receives the other nodes' announcements and sends this node's heartbeats, until shutdown.
pub(crate) async fn run(broker: Arc<Broker>, client: Client) {
    let (Some(cluster), Some(presence)) = (broker.cluster.as_ref(), broker.presence.as_ref())
    else {
        return;
    };
    let mut subscription = match client.subscribe(cluster.presence_subject.clone()).await {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::warn!(%error, "cluster: cannot subscribe to presence; other nodes' members are not listed here");
            return;
        }
    };
    let (interval, timeout) = cluster.presence_timing;
    let mut beats = tokio::time::interval(interval);
    let max_info = broker.presence_max_info;
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = beats.tick() => {
                let seq = presence.seq();
                cluster.send_presence(encode(&Announcement::Beat { node: cluster.node_id().into(), seq }));
                for change in presence.expire(Instant::now(), timeout) {
                    broker.announce_change(change);
                }
            }
            message = subscription.next() => {
                let Some(message) = message else { return };
                let Ok(announcement) = serde_json::from_slice::<Announcement<'_>>(&message.payload) else {
                    add(&broker.metrics.presence_refused, 1);
                    continue;
                };
                receive(&broker, announcement, max_info, interval);
            }
        }
    }
}

fn receive(
    broker: &Broker,
    announcement: Announcement<'_>,
    max_info: usize,
    interval: std::time::Duration,
) {
    let (Some(cluster), Some(presence)) = (broker.cluster.as_ref(), broker.presence.as_ref())
    else {
        return;
    };
    let now = Instant::now();
    let fits = |client: &str, user: &str, info: &str| {
        client.len() <= MAX_NAME && user.len() <= MAX_NAME && info.len() <= max_info
    };
    let member = |client: &str, user: &str, info: &str| Member {
        client: client.into(),
        user: user.into(),
        info: info.into(),
        node: None,
    };
    let want = |node: &Arc<str>| {
        cluster.send_presence(encode(&Announcement::Want {
            of: Cow::Borrowed(&**node),
        }));
    };
    match announcement {
        Announcement::Join {
            node,
            seq,
            channel,
            client,
            user,
            info,
        } => {
            if node == cluster.node_id()
                || !fits(&client, &user, &info)
                || presence.rule(&channel).is_none()
            {
                return;
            }
            let node: Arc<str> = (*node).into();
            let joined = member(&client, &user, &info);
            match presence.remote_change(&node, seq, &channel, true, joined, now) {
                Applied::Changed(change) => broker.announce_changes(change),
                Applied::Resync => {
                    if presence.should_resync(&node, now, interval) {
                        want(&node);
                    }
                }
            }
        }
        Announcement::Leave {
            node,
            seq,
            channel,
            client,
        } => {
            if node == cluster.node_id() || client.len() > MAX_NAME {
                return;
            }
            let node: Arc<str> = (*node).into();
            match presence.remote_change(&node, seq, &channel, false, member(&client, "", ""), now)
            {
                Applied::Changed(change) => broker.announce_changes(change),
                Applied::Resync => {
                    if presence.should_resync(&node, now, interval) {
                        want(&node);
                    }
                }
            }
        }
        Announcement::Beat { node, seq } => {
            if node == cluster.node_id() {
                return;
            }
            let node: Arc<str> = (*node).into();
            if presence.remote_beat(&node, seq, now, interval) {
                want(&node);
            }
        }
        Announcement::Want { of } => {
            if of != cluster.node_id() {
                return;
            }
            presence.snapshot(PART, |seq, members, last| {
                let members = members
                    .iter()
                    .map(|(channel, m)| WireMember {
                        channel: (*channel).into(),
                        client: (&*m.client).into(),
                        user: (&*m.user).into(),
                        info: (&*m.info).into(),
                    })
                    .collect();
                cluster.send_presence(encode(&Announcement::Part {
                    node: cluster.node_id().into(),
                    seq,
                    last,
                    members,
                }));
            });
        }
        Announcement::Part {
            node,
            seq,
            last,
            members,
        } => {
            if node == cluster.node_id() {
                return;
            }
            let members = members
                .into_iter()
                .filter(|m| {
                    fits(&m.client, &m.user, &m.info) && presence.rule(&m.channel).is_some()
                })
                .map(|m| {
                    (
                        Box::<str>::from(&*m.channel),
                        member(&m.client, &m.user, &m.info),
                    )
                })
                .collect();
            let node: Arc<str> = (*node).into();
            for change in presence.remote_part(&node, seq, members, last, now) {
                broker.announce_change(change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_with_characters_json_escapes_survive_the_trip() {
        let info = "Bob \"the builder\" \\ café";
        let sent = encode(&Announcement::Join {
            node: "n1".into(),
            seq: 7,
            channel: "room.a".into(),
            client: "00ff".into(),
            user: "bob".into(),
            info: info.into(),
        });
        match serde_json::from_slice::<Announcement<'_>>(&sent).unwrap() {
            Announcement::Join { seq, info: got, .. } => assert_eq!((seq, &*got), (7, info)),
            other => panic!("{other:?}"),
        }
    }
}
