//! Channel history in a cluster: NATS JetStream keeps it (`history.store = "jetstream"`), so a
//! client recovers through any node and losing a node loses nothing.
//!
//! - **One JetStream stream per channel.** Channel `c` is stored on subject
//!   `<prefix>.h.<tokens>` (tokens escaped as for pub/sub subjects) in stream
//!   `<prefix>_h_<name>`, made by the first node that needs it, with the bounds of the
//!   channel's `[[channels]]` block (`history_size` messages, `history_bytes`, `history_ttl_secs`;
//!   the oldest go first). JetStream numbers a stream's messages 1, 2, 3, ...: that number is
//!   the message's **offset**, consecutive per channel with no coordination between nodes.
//!   The **epoch** is the stream's creation time: it changes exactly when the stream, and the
//!   history in it, was lost (deleted, or made anew).
//! - **Publishing.** A publish to a history channel is handed, without waiting, to one task per
//!   node that stores it in JetStream (acknowledgements are awaited beside the stream of
//!   publishes, so they pipeline). The node does not deliver it to its own exact subscribers
//!   itself: they, like every node's, receive it from JetStream with its offset, so every
//!   subscriber of the cluster sees the same messages with the same offsets in the same order.
//!   Wildcard subscriptions get the message as before, through the channel's pub/sub subject
//!   (without offset and epoch: recovery is per channel).
//! - **Following.** While a channel has local subscribers (or catch-ups waiting), the node
//!   follows its stream with an ordered JetStream consumer, from the first message kept, into
//!   a mirror ([`History`](crate::pubsub::history::History)): the messages JetStream held when
//!   following began load it; every later one is kept and delivered to the local subscribers,
//!   under the mirror's lock, in offset order. Catch-ups read the mirror.
//! - **Bounds.** Per channel, the stream's limits. Over the cluster, a node makes no new stream
//!   when the NATS account already holds `history.max_channels` streams or
//!   `history.max_bytes` of JetStream storage; messages for such a channel are delivered
//!   without history (to wildcard subscriptions and nodes that follow it without a mirror)
//!   and counted as refused. Per node, mirrors count against the same two settings.
//! - **Faults.** A publish JetStream did not acknowledge (NATS away, the stream gone) is
//!   dropped and counted, as every cross-node message is; a follower that loses its consumer
//!   begins again from what its mirror holds; a catch-up never waits more than
//!   [`PENDING_WAIT`](crate::pubsub::history::PENDING_WAIT).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap,
    jetstream::{self, consumer::DeliverPolicy, stream::DiscardPolicy},
};
use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::sync::mpsc;

use crate::{
    Channel,
    broker::{Broker, cluster::subject_under},
    config::ChannelOptions,
    metrics::add,
    pubsub::history::{Catchup, Pending, Stream},
    transport::outbox::frame,
};

/// Publishes sent to JetStream whose acknowledgement has not come back yet, per node: beyond
/// it the storing task waits for the oldest before sending more.
const MAX_UNACKED: usize = 4096;

/// Streams a node remembers having made or found; beyond it the memory is cleared (and
/// streams are looked up again as they are used).
const MAX_KNOWN: usize = 100_000;

/// Pause before a follower begins again after an error (NATS away, JetStream off).
const RETRY: Duration = Duration::from_millis(500);

/// Where a cluster keeps channel history in JetStream.
pub(crate) struct Names {
    /// `<prefix>.h.`, followed by a channel's escaped tokens.
    subject_base: String,
    /// `<prefix>_h_` with the prefix's dots as `_`, followed by the channel's escaped name.
    stream_base: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Names {
        Names {
            subject_base: format!("{prefix}.h."),
            stream_base: format!("{}_h_", prefix.replace('.', "_")),
        }
    }

    /// The subject `channel` is stored on.
    pub(crate) fn subject(&self, channel: &str) -> String {
        subject_under(&self.subject_base, channel)
    }

    /// The stream that keeps `channel`: its name escaped whole (dots included, which stream
    /// names cannot hold); a name too long for JetStream keeps its first 96 bytes and adds a
    /// hash of the whole.
    pub(crate) fn stream(&self, channel: &str) -> String {
        // The whole name as one subject token (ASCII only): its dots escaped too.
        let mut escaped = String::with_capacity(channel.len() * 3);
        crate::broker::cluster::subject_token(channel, &mut escaped);
        let mut name = self.stream_base.clone();
        if escaped.len() <= 160 {
            name.push_str(&escaped);
        } else {
            name.push_str(&escaped[..96]);
            name.push_str(&format!("_{:016x}", fnv1a(channel.as_bytes())));
        }
        name
    }
}

/// FNV-1a, 64 bits: the same on every node (a randomly seeded hash would not be).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The epoch of a JetStream stream: its creation time in nanoseconds, 16 hex digits.
fn epoch_of(info: &jetstream::stream::Info) -> String {
    format!("{:016x}", info.created.unix_timestamp_nanos() as u64)
}

/// What the NATS account holds in JetStream (`$JS.API.INFO`), the two figures read of it (the
/// client's own account type expects fields older servers do not send).
#[derive(serde::Deserialize)]
struct Usage {
    streams: usize,
    storage: u64,
}

/// A message on its way to JetStream.
pub(crate) struct Stored {
    pub(crate) channel: Channel,
    pub(crate) payload: Bytes,
}

/// The stream of `channel`, made with the bounds of `options` if it does not exist yet and
/// the account has room for it.
async fn stream_of(
    broker: &Broker,
    js: &jetstream::Context,
    channel: &str,
    options: &ChannelOptions,
) -> Result<jetstream::stream::Stream, String> {
    let names = &broker
        .cluster
        .as_ref()
        .ok_or("not clustered")?
        .history_names;
    let name = names.stream(channel);
    match js.get_stream(&name).await {
        Ok(stream) => return Ok(stream),
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) => {}
        Err(error) => return Err(format!("JetStream: {error}")),
    }
    let (max_channels, max_bytes, replicas) = broker
        .history
        .as_ref()
        .map(|h| h.bounds())
        .ok_or("no history")?;
    let account: jetstream::response::Response<Usage> = js
        .request("INFO", &())
        .await
        .map_err(|e| format!("JetStream account: {e}"))?;
    let account = match account {
        jetstream::response::Response::Ok(usage) => usage,
        jetstream::response::Response::Err { error } => {
            return Err(format!("JetStream account: {error}"));
        }
    };
    if account.streams >= max_channels || account.storage >= max_bytes as u64 {
        add(&broker.metrics.history_refused, 1);
        return Err(format!(
            "no new history stream: the NATS account holds {} streams and {} bytes (history.max_channels {}, history.max_bytes {})",
            account.streams, account.storage, max_channels, max_bytes
        ));
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name,
        subjects: vec![names.subject(channel)],
        max_messages: i64::try_from(options.history_size).unwrap_or(i64::MAX),
        max_bytes: i64::try_from(options.history_bytes).unwrap_or(i64::MAX),
        max_age: Duration::from_secs(options.history_ttl_secs),
        discard: DiscardPolicy::Old,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("JetStream stream for {channel:?}: {e}"))
}

/// Stores what this node publishes to history channels, in the order published, until the
/// server shuts down. Streams are made as they are first needed.
pub(crate) async fn store(
    broker: Arc<Broker>,
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Stored>,
) {
    let Some(cluster) = broker.cluster.as_ref() else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(super::cluster::ORIGIN_HEADER, cluster.node_id());
    let mut known: HashSet<Channel> = HashSet::new();
    // After a stream could not be found or made (JetStream off, the account full), messages
    // for new channels are dropped without asking NATS again until this passes: no request
    // storm, one warning per pause.
    let mut paused_until: Option<Instant> = None;
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            Some(acked) = acks.next(), if !acks.is_empty() => {
                if let Err(error) = acked {
                    // Which stream refused is not said: look them all up again.
                    tracing::debug!(%error, "history: JetStream did not store a message");
                    cluster.count_dropped();
                    known.clear();
                }
            }
            stored = rx.recv() => {
                let Some(Stored { channel, payload }) = stored else { return };
                if !known.contains(&channel) {
                    let Some(options) = broker.history.as_ref().and_then(|h| h.options(channel.as_str())) else {
                        continue;
                    };
                    if paused_until.is_some_and(|until| Instant::now() < until) {
                        cluster.count_dropped();
                        continue;
                    }
                    if let Err(error) = stream_of(&broker, &js, channel.as_str(), options).await {
                        tracing::warn!(%error, %channel, "history: message not stored; new channels wait {RETRY:?}");
                        paused_until = Some(Instant::now() + RETRY);
                        cluster.count_dropped();
                        continue;
                    }
                    if known.len() >= MAX_KNOWN {
                        known.clear();
                    }
                    known.insert(channel.clone());
                }
                let subject = cluster.history_names.subject(channel.as_str());
                match js.publish_with_headers(subject, headers.clone(), payload).await {
                    Ok(ack) => acks.push(std::future::IntoFuture::into_future(ack)),
                    Err(error) => {
                        tracing::debug!(%error, "history: publish to JetStream failed");
                        cluster.count_dropped();
                    }
                }
                while acks.len() >= MAX_UNACKED {
                    if let Some(Err(_)) = acks.next().await {
                        cluster.count_dropped();
                        known.clear();
                    }
                }
            }
        }
    }
}

/// Follows the JetStream stream of `channel` into `mirror` until `stop` is cancelled,
/// beginning again after errors.
pub(crate) async fn follow(
    broker: Arc<Broker>,
    js: jetstream::Context,
    channel: Channel,
    mirror: Arc<Mutex<Stream>>,
    (stop, live): (tokio_util::sync::CancellationToken, Arc<AtomicBool>),
) {
    // One warning per outage: the first failure after following worked (or at the start).
    let mut warned = false;
    loop {
        let error = tokio::select! {
            _ = stop.cancelled() => return,
            error = follow_once(&broker, &js, &channel, &mirror, &live) => error,
        };
        if live.swap(false, Relaxed) {
            warned = false;
        }
        if warned {
            tracing::debug!(%error, %channel, "history: following JetStream again");
        } else {
            tracing::warn!(%error, %channel, "history: cannot follow the channel in JetStream; its subscribers here get nothing until it can (is nats-server running with -js?)");
            warned = true;
        }
        let due = answer_due(&broker, &channel, &mirror);
        let pause = due.map_or(RETRY, |d| {
            d.saturating_duration_since(Instant::now()).min(RETRY)
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One attempt at following: returns why it ended.
async fn follow_once(
    broker: &Arc<Broker>,
    js: &jetstream::Context,
    channel: &Channel,
    mirror: &Arc<Mutex<Stream>>,
    live: &AtomicBool,
) -> String {
    let Some(history) = broker.history.as_ref() else {
        return "no history".into();
    };
    let Some(options) = history.options(channel.as_str()) else {
        return "no history".into();
    };
    let stream = match stream_of(broker, js, channel.as_str(), options).await {
        Ok(stream) => stream,
        Err(error) => return error,
    };
    // As JetStream answered the look-up (or the creation) just now.
    let info = stream.cached_info();
    let last = info.state.last_sequence;
    let first = match info.state.messages {
        0 => last + 1,
        _ => info.state.first_sequence,
    };
    let epoch = epoch_of(info);
    let mut served = false;
    let (start, mut due) = history.mirror_begin(
        mirror,
        channel.as_str(),
        (&epoch, first, last),
        serve(broker, channel, &mut served),
    );
    recheck(broker, channel, served);
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await;
    let consumer = match consumer {
        Ok(consumer) => consumer,
        Err(error) => return format!("JetStream consumer: {error}"),
    };
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(error) => return format!("JetStream consumer: {error}"),
    };
    live.store(true, Relaxed);
    let max = broker.max_message_size;
    loop {
        let wait = async {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wait => due = answer_due(broker, channel, mirror),
            message = messages.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => return format!("JetStream consumer: {error}"),
                    None => return "JetStream consumer ended".into(),
                };
                let Ok(meta) = message.info() else { continue };
                let (offset, caught_up) = (meta.stream_sequence, meta.pending == 0);
                let payload = message.message.payload.clone();
                let parsed = (payload.len() <= max)
                    .then(|| lhttp_proto::Message::parse_with(payload, &broker.parser_limits).ok())
                    .flatten();
                let Some(parsed) = parsed else {
                    if let Some(cluster) = &broker.cluster {
                        cluster.count_dropped();
                    }
                    continue;
                };
                let deliver = |bytes| {
                    broker
                        .hub
                        .publish_exact(channel.as_str(), &frame(bytes), &broker.metrics);
                };
                let mut served = false;
                due = history.mirror_apply(
                    mirror,
                    channel.as_str(),
                    (offset, &parsed, caught_up),
                    deliver,
                    serve(broker, channel, &mut served),
                );
                recheck(broker, channel, served);
            }
        }
    }
}

/// Answers the catch-ups on `mirror` whose time is up; returns when the next one's is.
fn answer_due(broker: &Arc<Broker>, channel: &Channel, mirror: &Mutex<Stream>) -> Option<Instant> {
    let history = broker.history.as_ref()?;
    let mut served = false;
    let due = history.mirror_due(
        mirror,
        channel.as_str(),
        serve(broker, channel, &mut served),
    );
    recheck(broker, channel, served);
    due
}

/// After catch-ups were answered: a mirror kept only for reads (no subscriber left) is no
/// longer wanted, which the cluster's interest then says.
fn recheck(broker: &Broker, channel: &Channel, served: bool) {
    if served {
        broker.interest_changed(channel);
    }
}

/// Answers a waiting catch-up: subscribes its connection, then queues the answer and the
/// messages as one batch (under the mirror's lock, so live messages follow them). Sets
/// `served`, after which the caller calls [`recheck`].
fn serve<'a>(
    broker: &'a Arc<Broker>,
    channel: &'a Channel,
    served: &'a mut bool,
) -> impl FnMut(Pending, Catchup) + 'a {
    move |pending, catchup| {
        *served = true;
        if let Some((connection, outbox)) = &pending.subscriber {
            broker.hub.subscribe(channel, *connection, outbox);
        }
        let mut frames = Vec::with_capacity(catchup.frames.len() + 1);
        frames.push(frame(catchup.answer.to_bytes()));
        frames.extend(catchup.frames.into_iter().map(frame));
        let _ = pending.outbox.push_all(frames);
    }
}
