//! [`Hub`]: which connections are subscribed to which channel, and fan-out.
//!
//! Channels live in a concurrent map sharded by name, so publishes to different channels do not
//! contend, and a publish holds only its channel's shard lock, for the time it takes to push a
//! shared frame into each subscriber's queue (never across an `.await`).

use dashmap::DashMap;

use crate::{
    Channel,
    metrics::{Metrics, add},
    transport::ConnectionId,
    transport::{Outgoing, outbox::Outbox},
};

/// One subscription of one connection.
#[derive(Debug)]
struct Subscriber {
    connection: ConnectionId,
    outbox: Outbox,
}

/// The local subscription table.
#[derive(Debug, Default)]
pub struct Hub {
    /// Channel name -> its subscribers. A channel exists only while it has subscribers.
    /// Hashed with foldhash (randomly seeded per map): every publish hashes its channel name,
    /// and SipHash, the standard choice, was a tenth of the publish path.
    channels: DashMap<Channel, Vec<Subscriber>, foldhash::quality::RandomState>,
}

impl Hub {
    /// Adds a subscription. The connection's own subscription set makes this idempotent; the hub
    /// trusts it and does not scan for duplicates. Returns true when it created the channel
    /// (its first subscriber), which is when a cluster node must gain interest in it.
    pub(crate) fn subscribe(
        &self,
        channel: &Channel,
        connection: ConnectionId,
        outbox: &Outbox,
    ) -> bool {
        let mut subscribers = self.channels.entry(channel.clone()).or_default();
        let created = subscribers.is_empty();
        subscribers.push(Subscriber {
            connection,
            outbox: outbox.clone(),
        });
        created
    }

    /// Removes a subscription; removes the channel when it was the last one, and then returns
    /// true (a cluster node must drop its interest).
    pub(crate) fn unsubscribe(&self, channel: &str, connection: ConnectionId) -> bool {
        if let Some(mut subscribers) = self.channels.get_mut(channel) {
            if let Some(i) = subscribers.iter().position(|s| s.connection == connection) {
                subscribers.swap_remove(i);
            }
        }
        self.channels
            .remove_if(channel, |_, subscribers| subscribers.is_empty())
            .is_some()
    }

    /// Queues `frame` for every subscriber of `channel`; returns how many it was queued for.
    /// Subscribers whose queue is full are skipped (and disconnected by their writer).
    pub(crate) fn publish(&self, channel: &str, frame: &Outgoing, metrics: &Metrics) -> usize {
        self.publish_with(channel, || frame.clone(), metrics)
    }

    /// [`Hub::publish`] with the frame made by `frame`, called only when `channel` has
    /// subscribers (and while its shard is read-locked: `frame` must not touch the hub).
    pub(crate) fn publish_with(
        &self,
        channel: &str,
        frame: impl FnOnce() -> Outgoing,
        metrics: &Metrics,
    ) -> usize {
        let Some(subscribers) = self.channels.get(channel) else {
            return 0;
        };
        let frame = frame();
        let mut delivered = 0;
        let (last, others) = subscribers
            .split_last()
            .expect("a channel exists only while it has subscribers");
        for subscriber in others {
            if subscriber.outbox.push(frame.clone()).is_ok() {
                delivered += 1;
            }
        }
        // The last one takes the frame itself: with one subscriber, the bytes are never
        // shared, and `Bytes` then never allocates its shared header.
        if last.outbox.push(frame).is_ok() {
            delivered += 1;
        }
        let dropped = subscribers.len() - delivered;
        drop(subscribers);
        add(&metrics.deliveries, delivered as u64);
        if dropped > 0 {
            add(&metrics.dropped_deliveries, dropped as u64);
        }
        delivered
    }

    /// True when `channel` has at least one local subscriber.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Number of channels with subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Number of subscriptions over all channels.
    pub fn subscription_count(&self) -> usize {
        self.channels.iter().map(|entry| entry.value().len()).sum()
    }

    /// Number of subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |s| s.len())
    }
}
