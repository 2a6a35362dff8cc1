//! Where a published message goes: the broker routes every publish — from a connection, from
//! `POST /publish`, from code, from the gateway — to the local subscribers of its channels
//! through the [`Hub`], to this node's queue groups, to a request's inbox, and in a cluster to
//! the other nodes through NATS ([`cluster`]). A single node has no cluster and runs no NATS
//! code. Every publisher reaches the same [`Broker::publish_as`], so limits and queue-group
//! charges apply alike whoever publishes.

pub(crate) mod cluster;
pub(crate) mod history;
pub(crate) mod nodes;
pub(crate) mod presence;

use std::{
    sync::{Arc, Weak},
    time::Instant,
};

use lhttp_proto::{Message, names};
use tokio_util::sync::CancellationToken;

use crate::{
    Channel, Hub, Metrics, PublishReport, Rejection,
    config::Limits,
    metrics::add,
    pubsub::channel,
    pubsub::history::{Ask, Catchup, History, PENDING_WAIT, Pending, Want},
    pubsub::presence::{self as pubsub_presence, Member, Presence},
    pubsub::publish::encode_for_channel,
    requests::inbox::{InboxDelivery, Requests, is_inbox},
    requests::queue::{Charge, Env, Offered, Publisher, QueueGroup, QueueHost, Queues, Refusal},
    transport::ConnectionId,
    transport::outbox::{Outbox, SendError, frame},
};
use cluster::Cluster;

/// The publish router and what it routes to. Shared (in an `Arc`) by every session, the HTTP
/// side, the cluster's receiving tasks and queue groups' expiry timers.
pub(crate) struct Broker {
    /// Local subscriptions.
    pub(crate) hub: Hub,
    /// Inboxes and the requests waiting for answers.
    pub(crate) requests: Requests,
    /// Queue groups by channel.
    pub(crate) queues: Queues,
    /// The channels that keep history; `None` when no `[[channels]]` block keeps any.
    pub(crate) history: Option<History>,
    /// The members of the channels with presence; `None` when no block has `presence`.
    pub(crate) presence: Option<Presence>,
    /// `None` on a single node, where publishing is local fan-out only; the NATS membership
    /// when `[cluster] nats` is set.
    pub(crate) cluster: Option<Cluster>,
    /// Shared with request timers, which outlive the call that started them.
    pub(crate) metrics: Arc<Metrics>,
    /// How messages from other nodes are parsed (`limits`).
    pub(crate) parser_limits: lhttp_proto::Limits,
    /// `limits.max_message_size`: larger messages from other nodes are dropped.
    pub(crate) max_message_size: usize,
    /// `limits.max_publish_channels`.
    max_publish_channels: usize,
    /// `limits.max_presence_info`: longer infos announced by other nodes are not held.
    pub(crate) presence_max_info: usize,
    /// Cancelled when the server starts shutting down; ends the cluster's tasks.
    pub(crate) shutdown: CancellationToken,
    /// This broker's own `Arc`, for the tasks it starts (cluster subscriptions, queue timers).
    me: Weak<Broker>,
}

/// What a [`Broker`] is built from.
pub(crate) struct Parts {
    pub(crate) requests: Requests,
    pub(crate) queues: Queues,
    pub(crate) history: Option<History>,
    pub(crate) presence: Option<Presence>,
    pub(crate) cluster: Option<Cluster>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: CancellationToken,
}

impl Broker {
    pub(crate) fn new(parts: Parts, limits: &Limits) -> Arc<Broker> {
        Arc::new_cyclic(|me| Broker {
            hub: Hub::default(),
            requests: parts.requests,
            queues: parts.queues,
            history: parts.history,
            presence: parts.presence,
            cluster: parts.cluster,
            metrics: parts.metrics,
            parser_limits: limits.parser(),
            max_message_size: limits.max_message_size,
            max_publish_channels: limits.max_publish_channels,
            presence_max_info: limits.max_presence_info,
            shutdown: parts.shutdown,
            me: me.clone(),
        })
    }

    /// Publishes `message` to the channels in its `publish` header(s), with queue-group work
    /// charged to `publisher`; refused as [`ServerHandle::publish`](crate::ServerHandle::publish)
    /// documents.
    pub(crate) fn publish_as(
        &self,
        message: &Message,
        publisher: Publisher,
    ) -> Result<PublishReport, Rejection> {
        // One channel, the usual case, needs no list collected.
        let (one, list);
        let channels: &[&str] = match channel::PublishList::of(message.headers()) {
            channel::PublishList::One { name, .. } => {
                channel::check(name)?;
                one = [name];
                &one
            }
            _ => {
                list = channel::parse_list(message.headers().get_all(names::PUBLISH))?;
                &list
            }
        };
        if channels.is_empty() {
            return Err(Rejection::bad_request("no channel in a publish header"));
        }
        // Each channel is a fan-out of its own: 10,000 of them in one message cost about
        // 1.25 ms of server CPU, for one token of the sender's message rate.
        let max = self.max_publish_channels;
        if channels.len() > max {
            return Err(Rejection::bad_request(format!(
                "a message may be published to at most {max} channels"
            )));
        }
        let mut charge = self.reserve(channels, message, publisher)?;
        let mut report = PublishReport::default();
        let mut refused = None;
        for &channel in channels {
            report.channels += 1;
            let routed = self.route(channel, message, publisher, &mut charge);
            report.deliveries += routed.deliveries;
            report.queued += routed.offered.taken;
            refused = worst(refused, routed.offered.refused);
        }
        refusal_answer(message, report.deliveries + report.queued, refused)?;
        Ok(report)
    }

    /// Publishes to `channel`, a name already checked, with queue-group work charged to
    /// `publisher`. Returns (local subscribers it was queued for, queue groups that took it);
    /// refused with 429 when that publisher's share is full and 503 when the server's budget
    /// or the group's waiting queue is (for a request: when nobody took it), before anything
    /// is delivered.
    pub(crate) fn publish_checked_by(
        &self,
        channel: &str,
        message: &Message,
        publisher: Publisher,
    ) -> Result<(usize, usize), Rejection> {
        if self.queues.is_empty() {
            // Plain pub/sub (no queue group was ever made): nothing to charge or refuse, and
            // this runs for every message (callgrind 1 -> 1: 50 instructions a message less).
            let routed = self.route(channel, message, publisher, &mut None);
            return Ok((routed.deliveries, 0));
        }
        let mut charge = self.reserve(&[channel], message, publisher)?;
        let routed = self.route(channel, message, publisher, &mut charge);
        let taken = routed.deliveries + routed.offered.taken;
        refusal_answer(message, taken, routed.offered.refused)?;
        Ok((routed.deliveries, routed.offered.taken))
    }

    /// True when this node's queue groups take their work from the publish itself: some group
    /// was ever made, and no connected cluster routes it through NATS instead (which picks one
    /// node per group, this one included).
    fn groups_take_here(&self) -> bool {
        !self.queues.is_empty()
            && !self
                .cluster
                .as_ref()
                .is_some_and(|c| c.routes_queue_groups())
    }

    /// Charges `publisher` for the queue-group work of publishing `message` to `channels`,
    /// before anything is delivered (see [`Queues::reserve`]); one atomic load when no group
    /// was ever made, which is plain pub/sub's whole cost here.
    fn reserve(
        &self,
        channels: &[&str],
        message: &Message,
        publisher: Publisher,
    ) -> Result<Option<Charge>, Rejection> {
        if !self.groups_take_here() {
            return Ok(None);
        }
        self.queues
            .reserve(channels, message, publisher)
            .map_err(|refusal| {
                add(&self.metrics.queue_refused_bytes, 1);
                refusal.rejection()
            })
    }

    /// Delivers `message` on `channel`: to its local subscribers, to this node's queue groups
    /// (their jobs charged from `charge`), and to other nodes in a cluster.
    fn route(
        &self,
        channel: &str,
        message: &Message,
        publisher: Publisher,
        charge: &mut Option<Charge>,
    ) -> Routed {
        let shared = self;
        let metrics = &shared.metrics;
        add(&metrics.messages_published, 1);
        if is_inbox(channel) {
            let node = Requests::node_of(channel);
            if let (Some(cluster), Some(node)) = (&shared.cluster, node) {
                if node != shared.requests.node() {
                    cluster.forward_to_inbox(node, encode_for_channel(message, channel));
                    return Routed::delivered(1);
                }
            }
            let delivery = shared.requests.deliver(channel, message, metrics);
            return Routed::delivered(usize::from(delivery == InboxDelivery::Delivered));
        }
        // In a connected cluster, queue groups get their messages through NATS (which picks
        // one node per group, this one included); otherwise this node's groups take them here.
        let offered = if !self.groups_take_here() {
            Offered::default()
        } else {
            shared
                .queues
                .offer(channel, message, publisher, charge, &Env::of(self))
        };
        let Some(cluster) = &shared.cluster else {
            if let Some(history) = &shared.history {
                // Kept and delivered under the channel's stream lock, in offset order.
                let deliver = |bytes| shared.hub.publish(channel, &frame(bytes), metrics);
                if let Some(deliveries) = history.publish(channel, message, deliver) {
                    return Routed {
                        deliveries,
                        offered,
                    };
                }
            }
            // Encoded only when the channel has subscribers, found with one lookup.
            let encode = || frame(encode_for_channel(message, channel));
            let deliveries = shared.hub.publish_with(channel, encode, metrics);
            return Routed {
                deliveries,
                offered,
            };
        };
        let local = shared.hub.has_subscribers(channel);
        // Other nodes get the very bytes local subscribers get: encoded once, shared.
        let bytes = encode_for_channel(message, channel);
        let request = message
            .header(names::REPLY_TO)
            .filter(|address| Requests::node_of(address) == Some(shared.requests.node()));
        if let Some(history) = shared
            .history
            .as_ref()
            .filter(|h| h.is_mirrored() && h.keeps(channel))
        {
            // Stored in JetStream, from where every node's exact subscribers (this node's
            // too) receive it with its offset. Wildcard subscriptions, and nodes that follow
            // the channel without a mirror, get it as any message.
            cluster.store(channel, bytes.clone());
            cluster.publish(channel, bytes.clone(), request);
            let frame = frame(bytes);
            let deliveries = match history.has_mirror(channel) {
                true => shared.hub.publish_patterns(channel, &frame, metrics),
                false => shared.hub.publish(channel, &frame, metrics),
            };
            return Routed {
                deliveries,
                offered,
            };
        }
        cluster.publish(channel, bytes.clone(), request);
        if !local {
            return Routed {
                deliveries: 0,
                offered,
            };
        }
        Routed {
            deliveries: shared.hub.publish(channel, &frame(bytes), metrics),
            offered,
        }
    }

    /// Called after a queue group's membership changed: a cluster node holds a NATS queue
    /// subscription for the group while it has local members.
    fn reconcile_queue_group(&self, group: &QueueGroup) {
        if let (Some(cluster), Some(me)) = (&self.cluster, self.me.upgrade()) {
            cluster.reconcile_queue(&me, group.channel_name(), group.name());
        }
    }

    /// Called when wildcard pattern `pattern` gained its first or lost its last local
    /// subscriber: a cluster node then subscribes to the pattern in NATS or unsubscribes.
    pub(crate) fn pattern_interest_changed(&self, pattern: &str) {
        if let (Some(cluster), Some(me)) = (&self.cluster, self.me.upgrade()) {
            cluster.reconcile_pattern(&me, pattern);
        }
    }

    /// Called after `connection` unsubscribed from `channel` (`last`: the channel lost its last
    /// local subscriber): drops a catch-up it may still wait for, and fixes the cluster's
    /// interest when either changed it.
    pub(crate) fn unsubscribed(&self, channel: &Channel, connection: ConnectionId, last: bool) {
        let waited = self
            .history
            .as_ref()
            .is_some_and(|h| h.cancel_pending(channel.as_str(), connection));
        if last || waited {
            self.interest_changed(channel);
        }
    }

    /// Called when `channel` gained its first or lost its last local subscriber: a cluster
    /// node then subscribes to it in NATS or unsubscribes.
    pub(crate) fn interest_changed(&self, channel: &Channel) {
        if let (Some(cluster), Some(me)) = (&self.cluster, self.me.upgrade()) {
            cluster.reconcile(&me, channel);
        }
    }

    /// Publishes `message` to `channel` only, whatever its `publish` header says; returns the
    /// number of local subscribers and queue groups that took it. Refused as
    /// [`Broker::publish_checked_by`] is, and with 400 for an invalid channel name.
    pub(crate) fn publish_to(
        &self,
        channel: &str,
        message: &Message,
        publisher: Publisher,
    ) -> Result<usize, Rejection> {
        channel::check(channel)?;
        let (deliveries, queued) = self.publish_checked_by(channel, message, publisher)?;
        Ok(deliveries + queued)
    }
}

impl Broker {
    /// Subscribes `connection` to `channel` and queues for it, as one batch, the answer
    /// (`command`) and the history `want` asks for; or, with `subscribe` false, only reads
    /// the history. Atomic with the channel's publishes: no message is missed or repeated
    /// between the history and what follows live. Returns true when the subscription created
    /// the channel in the hub.
    pub(crate) fn catch_up(
        &self,
        channel: &Channel,
        want: &Want,
        command: &'static str,
        request_id: Option<&str>,
        subscriber: Option<(ConnectionId, &Outbox)>,
        outbox: &Outbox,
    ) -> Result<bool, SendError> {
        let mut created = false;
        let subscribe = || {
            if let Some((connection, outbox)) = subscriber {
                created = self.hub.subscribe(channel, connection, outbox);
            }
        };
        let queue = |catchup: Catchup| {
            let mut frames = Vec::with_capacity(catchup.frames.len() + 1);
            frames.push(frame(catchup.answer.to_bytes()));
            frames.extend(catchup.frames.into_iter().map(frame));
            outbox.push_all(frames)
        };
        let ask = Ask {
            channel: channel.as_str(),
            want,
            command,
            request_id,
        };
        let queued = match &self.history {
            Some(history) if history.is_mirrored() => {
                let wait = || Pending {
                    subscriber: subscriber.map(|(id, outbox)| (id, outbox.clone())),
                    outbox: outbox.clone(),
                    want: want.clone(),
                    command,
                    request_id: request_id.map(Into::into),
                    deadline: Instant::now() + PENDING_WAIT,
                };
                match history.catch_up_or_wait(ask, subscribe, queue, wait) {
                    Some(queued) => queued,
                    None => {
                        // The mirror's follower answers it; make sure there is one.
                        self.interest_changed(channel);
                        return Ok(false);
                    }
                }
            }
            Some(history) => history.catch_up(ask, subscribe, queue),
            None => crate::pubsub::history::without_history(ask, subscribe, queue),
        };
        queued.map(|()| created)
    }
}

impl Broker {
    /// Called after `member` subscribed to `channel`: makes it a member when the channel has
    /// presence, and tells the channel's subscribers when it has `join_leave`. A server
    /// already holding `limits.max_presence_members` leaves it unlisted (counted), which
    /// [`Broker::presence_has_room`] makes rare by refusing such subscribes first.
    pub(crate) fn joined(&self, channel: &str, member: impl FnOnce() -> Member) {
        let Some(presence) = &self.presence else {
            return;
        };
        let Some(join_leave) = presence.rule(channel) else {
            return;
        };
        let member = member();
        let numbered = |seq, member: &Member| presence::announce_join(self, seq, channel, member);
        match presence.join(channel, member.clone(), numbered) {
            Ok(true) if join_leave => self.announce(names::command::JOIN, channel, &member),
            Ok(_) => {}
            Err(pubsub_presence::Refused::Full) => add(&self.metrics.presence_refused, 1),
        }
    }

    /// Called after client `client` unsubscribed from `channel` (or disconnected).
    pub(crate) fn left(&self, channel: &str, client: &str) {
        let Some(presence) = &self.presence else {
            return;
        };
        let Some(join_leave) = presence.rule(channel) else {
            return;
        };
        let numbered = |seq| presence::announce_leave(self, seq, channel, client);
        if let Some(member) = presence.leave(channel, client, numbered) {
            if join_leave {
                self.announce(names::command::LEAVE, channel, &member);
            }
        }
    }

    /// True when `channels` (about to be subscribed) would not take the server past
    /// `limits.max_presence_members`.
    pub(crate) fn presence_has_room<'a>(&self, channels: impl Iterator<Item = &'a str>) -> bool {
        let Some(presence) = &self.presence else {
            return true;
        };
        let new = channels.filter(|c| presence.rule(c).is_some()).count();
        new == 0 || presence.has_room_for(new)
    }

    /// Tells local subscribers of a change another node announced (or of a node's members
    /// leaving with it), where the channel has `join_leave`.
    pub(crate) fn announce_change(&self, (command, channel, member): pubsub_presence::Change) {
        if let Some(true) = self.presence.as_ref().and_then(|p| p.rule(&channel)) {
            self.announce(command, &channel, &member);
        }
    }

    pub(crate) fn announce_changes(&self, change: Option<pubsub_presence::Change>) {
        if let Some(change) = change {
            self.announce_change(change);
        }
    }

    fn announce(&self, command: &'static str, channel: &str, member: &Member) {
        let message = pubsub_presence::announcement(command, channel, member);
        self.hub
            .publish(channel, &frame(message.to_bytes()), &self.metrics);
    }
}

impl QueueHost for Broker {
    fn queues(&self) -> &Queues {
        &self.queues
    }

    fn requests(&self) -> &Requests {
        &self.requests
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn queue_interest_changed(&self, group: &QueueGroup) {
        self.reconcile_queue_group(group);
    }

    fn answer(&self, address: &str, answer: &Message) {
        // An answer that cannot be delivered has nobody left to tell.
        let _ = self.publish_to(address, answer, Publisher::Http);
    }

    fn owned(&self) -> Option<Arc<dyn QueueHost>> {
        self.me.upgrade().map(|me| me as Arc<dyn QueueHost>)
    }
}

/// What one channel of a publish reached.
struct Routed {
    /// Local subscribers (or the inbox) it was queued for.
    deliveries: usize,
    /// What this node's queue groups did with it.
    offered: Offered,
}

impl Routed {
    fn delivered(deliveries: usize) -> Self {
        Routed {
            deliveries,
            offered: Offered::default(),
        }
    }
}

fn worst(a: Option<Refusal>, b: Option<Refusal>) -> Option<Refusal> {
    match (a, b) {
        (a, None) => a,
        (a, Some(b)) => Some(Refusal::worst(a, b)),
    }
}

/// The answer to a publish some queue group refused: a plain message is refused wherever it
/// was (its publisher must know that work was not queued); a request only when nobody took
/// it, since whoever did may still answer.
fn refusal_answer(
    message: &Message,
    taken: usize,
    refused: Option<Refusal>,
) -> Result<(), Rejection> {
    match refused {
        Some(_) if taken > 0 && message.headers().contains(names::REPLY_TO) => Ok(()),
        Some(refusal) => Err(refusal.rejection()),
        None => Ok(()),
    }
}
