//! [`Hub`]: which connections are subscribed to which channel, and fan-out.
//!
//! Channels live in a concurrent map sharded by name, so publishes to different channels do not
//! contend, and a publish holds only its channel's shard lock, for the time it takes to push a
//! shared frame into each subscriber's queue (never across an `.await`).

use std::{
    sync::{
        PoisonError, RwLock,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Instant,
};

use dashmap::DashMap;
use lhttp_proto::pattern::Pattern;

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

/// The subscribers of one wildcard pattern.
#[derive(Debug)]
struct PatternSubscribers {
    text: Box<str>,
    pattern: Pattern,
    subscribers: Vec<Subscriber>,
}

/// The local subscription table.
#[derive(Debug, Default)]
pub struct Hub {
    /// Channel name -> its subscribers. A channel exists only while it has subscribers.
    /// Hashed with foldhash (randomly seeded per map): every publish hashes its channel name,
    /// and SipHash, the standard choice, was a tenth of the publish path.
    channels: DashMap<Channel, Vec<Subscriber>, foldhash::quality::RandomState>,
    /// Wildcard subscriptions (`sensor.*.temp`, `chat.>`), each distinct pattern once. A
    /// publish matches its channel against every one of them (`limits.max_patterns` bounds
    /// how many), so plain publishes skip this with one atomic load while there is none.
    patterns: RwLock<Vec<PatternSubscribers>>,
    /// `patterns.len()`, read without the lock.
    pattern_count: AtomicUsize,
}

/// A new pattern would exceed `limits.max_patterns`.
#[derive(Debug)]
pub(crate) struct TooManyPatterns;

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
    /// subscribers, exact or by pattern (and while its shard is read-locked: `frame` must not
    /// touch the hub).
    pub(crate) fn publish_with(
        &self,
        channel: &str,
        frame: impl FnOnce() -> Outgoing,
        metrics: &Metrics,
    ) -> usize {
        if self.pattern_count.load(Relaxed) > 0 {
            return self.publish_with_patterns(channel, frame, metrics);
        }
        let Some(subscribers) = self.channels.get(channel) else {
            return 0;
        };
        let frame = frame();
        // One clock reading per publish, for every delivery's latency.
        let published = Instant::now();
        let mut delivered = 0;
        let (last, others) = subscribers
            .split_last()
            .expect("a channel exists only while it has subscribers");
        for subscriber in others {
            if subscriber.outbox.push_at(frame.clone(), published).is_ok() {
                delivered += 1;
            }
        }
        // The last one takes the frame itself: with one subscriber, the bytes are never
        // shared, and `Bytes` then never allocates its shared header.
        if last.outbox.push_at(frame, published).is_ok() {
            delivered += 1;
        }
        let dropped = subscribers.len() - delivered;
        drop(subscribers);
        count(metrics, delivered, dropped);
        delivered
    }

    /// [`Hub::publish_with`] while wildcard subscriptions exist: the exact subscribers, then
    /// those of every pattern that matches `channel` (a connection subscribed both ways gets a
    /// copy per subscription).
    fn publish_with_patterns(
        &self,
        channel: &str,
        frame: impl FnOnce() -> Outgoing,
        metrics: &Metrics,
    ) -> usize {
        let exact = self.channels.get(channel);
        let patterns = self.patterns.read().unwrap_or_else(PoisonError::into_inner);
        let mut matching = patterns
            .iter()
            .filter(|p| p.pattern.matches(channel))
            .peekable();
        if exact.is_none() && matching.peek().is_none() {
            return 0;
        }
        let frame = frame();
        // One clock reading per publish, for every delivery's latency.
        let published = Instant::now();
        let (mut delivered, mut total) = (0, 0);
        let subscribers = exact
            .iter()
            .flat_map(|s| s.iter())
            .chain(matching.flat_map(|p| p.subscribers.iter()));
        for subscriber in subscribers {
            total += 1;
            if subscriber.outbox.push_at(frame.clone(), published).is_ok() {
                delivered += 1;
            }
        }
        drop(patterns);
        drop(exact);
        count(metrics, delivered, total - delivered);
        delivered
    }

    /// Queues `frame` for the exact subscribers of `channel` only (messages another node
    /// received through the channel's own NATS subscription).
    pub(crate) fn publish_exact(
        &self,
        channel: &str,
        frame: &Outgoing,
        metrics: &Metrics,
    ) -> usize {
        let Some(subscribers) = self.channels.get(channel) else {
            return 0;
        };
        let published = Instant::now();
        let delivered = subscribers
            .iter()
            .filter(|s| s.outbox.push_at(frame.clone(), published).is_ok())
            .count();
        let dropped = subscribers.len() - delivered;
        drop(subscribers);
        count(metrics, delivered, dropped);
        delivered
    }

    /// Adds a subscription to `pattern` (already parsed and allowed). Returns true when it
    /// is the pattern's first subscriber; refuses a new pattern beyond `max` distinct ones.
    pub(crate) fn subscribe_pattern(
        &self,
        text: &str,
        pattern: Pattern,
        connection: ConnectionId,
        outbox: &Outbox,
        max: usize,
    ) -> Result<bool, TooManyPatterns> {
        let mut patterns = self
            .patterns
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let subscriber = Subscriber {
            connection,
            outbox: outbox.clone(),
        };
        if let Some(entry) = patterns.iter_mut().find(|p| &*p.text == text) {
            entry.subscribers.push(subscriber);
            return Ok(false);
        }
        if patterns.len() >= max {
            return Err(TooManyPatterns);
        }
        patterns.push(PatternSubscribers {
            text: text.into(),
            pattern,
            subscribers: vec![subscriber],
        });
        self.pattern_count.store(patterns.len(), Relaxed);
        Ok(true)
    }

    /// Removes a subscription to `pattern`; returns true when it was the pattern's last.
    pub(crate) fn unsubscribe_pattern(&self, text: &str, connection: ConnectionId) -> bool {
        let mut patterns = self
            .patterns
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(i) = patterns.iter().position(|p| &*p.text == text) else {
            return false;
        };
        let subscribers = &mut patterns[i].subscribers;
        if let Some(j) = subscribers.iter().position(|s| s.connection == connection) {
            subscribers.swap_remove(j);
        }
        if !subscribers.is_empty() {
            return false;
        }
        patterns.swap_remove(i);
        self.pattern_count.store(patterns.len(), Relaxed);
        true
    }

    /// Queues `frame` for the subscribers of every wildcard pattern that matches `channel`,
    /// and not for its exact subscribers (who receive a history channel's messages of a
    /// cluster from JetStream).
    pub(crate) fn publish_patterns(
        &self,
        channel: &str,
        frame: &Outgoing,
        metrics: &Metrics,
    ) -> usize {
        if self.pattern_count.load(Relaxed) == 0 {
            return 0;
        }
        let patterns = self.patterns.read().unwrap_or_else(PoisonError::into_inner);
        let (mut delivered, mut total) = (0, 0);
        let published = Instant::now();
        for subscriber in patterns
            .iter()
            .filter(|p| p.pattern.matches(channel))
            .flat_map(|p| p.subscribers.iter())
        {
            total += 1;
            if subscriber.outbox.push_at(frame.clone(), published).is_ok() {
                delivered += 1;
            }
        }
        drop(patterns);
        count(metrics, delivered, total - delivered);
        delivered
    }

    /// Queues `frame` for the subscribers of wildcard pattern `text` only (messages another
    /// node received through the pattern's own NATS subscription).
    pub(crate) fn publish_pattern(&self, text: &str, frame: &Outgoing, metrics: &Metrics) -> usize {
        let patterns = self.patterns.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = patterns.iter().find(|p| &*p.text == text) else {
            return 0;
        };
        let published = Instant::now();
        let delivered = entry
            .subscribers
            .iter()
            .filter(|s| s.outbox.push_at(frame.clone(), published).is_ok())
            .count();
        let dropped = entry.subscribers.len() - delivered;
        drop(patterns);
        count(metrics, delivered, dropped);
        delivered
    }

    /// True when wildcard pattern `text` has a local subscriber.
    pub(crate) fn has_pattern(&self, text: &str) -> bool {
        let patterns = self.patterns.read().unwrap_or_else(PoisonError::into_inner);
        patterns.iter().any(|p| &*p.text == text)
    }

    /// Distinct wildcard patterns with subscribers.
    pub fn pattern_count(&self) -> usize {
        self.pattern_count.load(Relaxed)
    }

    /// True when `channel` has at least one local subscriber.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Number of channels with subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Number of subscriptions over all channels and patterns.
    pub fn subscription_count(&self) -> usize {
        let patterns = self.patterns.read().unwrap_or_else(PoisonError::into_inner);
        self.channels
            .iter()
            .map(|entry| entry.value().len())
            .sum::<usize>()
            + patterns.iter().map(|p| p.subscribers.len()).sum::<usize>()
    }

    /// At most `limit` channels whose names start with `prefix`, sorted by name, with their
    /// subscriber counts. When more match, which are listed is not defined: a longer prefix
    /// narrows the list.
    pub(crate) fn list(&self, prefix: &str, limit: usize) -> Vec<(Channel, usize)> {
        let mut listed: Vec<(Channel, usize)> = self
            .channels
            .iter()
            .filter(|entry| entry.key().as_str().starts_with(prefix))
            .take(limit)
            .map(|entry| (entry.key().clone(), entry.value().len()))
            .collect();
        listed.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        listed
    }

    /// Number of subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |s| s.len())
    }
}

fn count(metrics: &Metrics, delivered: usize, dropped: usize) {
    add(&metrics.deliveries, delivered as u64);
    if dropped > 0 {
        add(&metrics.dropped_deliveries, dropped as u64);
    }
}
