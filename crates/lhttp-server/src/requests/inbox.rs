//! Requests: inboxes, reply addresses, and the one terminal answer every request gets.
//!
//! An *inbox* is a private address, `_inbox.<node>.<token>`, that delivers to one owner only:
//! a WebSocket connection or the HTTP gateway. `<node>` names the server process (8 hex digits,
//! random at start), so that in a cluster any node can route a reply to the node that holds
//! the inbox (see [`crate::broker::cluster`]); the token is random (128 bits); nobody can subscribe to
//! one. Only its owner learns the address (the `inbox` command) and may hand it out; when
//! channel rules are configured, a plain message to an inbox also needs a rule that lets the
//! sender publish there (see [`crate::security::permissions`]). A connection gets its inbox the first
//! time it needs one, so idle connections pay nothing.
//!
//! A *request* is a published message with a `reply-to` header. The server, not the client,
//! decides where answers go: it replaces `reply-to` with a fresh reply address
//! `_inbox.<node>.<replies>.<key>` and records a [`Pending`] entry for it. `<replies>` is a
//! second random token of the inbox, unrelated to its address, and `<key>` is 64 random bits
//! drawn for this request alone: a reply address is the right to answer that one request. It
//! reaches only those the request is delivered to (its subscribers, or the one queue-group
//! member that takes it), who may hand it on (a *forward*: a request published with
//! `reply-to` set to a reply address it holds keeps that address, so the next handler answers
//! the original requester), and it tells nothing of the inbox or of the requester's other
//! requests, so it cannot be guessed from another one. A reply may itself be a request (it
//! carries `reply-to`): the server gives it a reply address of the responder's inbox, and the
//! requester receives it with that `reply-to`, to answer in turn (*nested* requests). From
//! then on exactly one terminal answer reaches the requester, whichever comes first:
//! - a reply published to the reply address without `partial:true` (partial replies are
//!   relayed too, and each pushes the deadline back by the request's timeout);
//! - `503` when the message reached nobody, or still waited in a queue group without members
//!   when its time ran out;
//! - `504` when the timeout passed;
//! - `502` when the queue-group member holding it disconnected and it did not ask for
//!   at-least-once delivery.
//!
//! Whatever arrives for the address after that is dropped and counted
//! (`lhttp_request_late_replies_total`). The requester's `request-id` is copied into every
//! answer, so responders need not carry it.

use lhttp_proto::names;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use bytes::Bytes;
use dashmap::DashMap;
use lhttp_proto::{Message, Text};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    Rejection,
    config::RequestsConfig,
    metrics::{Metrics, add},
    requests::queue::QueueGroup,
    transport::outbox::{Outbox, frame},
};

pub(crate) use lhttp_proto::channel::{INBOX_PREFIX, is_inbox};

/// True when `channel` is a reply address, `_inbox.<node>.<replies>.<key>`: the right to
/// answer one request, which no channel rule needs to grant. A connection's own inbox
/// (`_inbox.<node>.<token>`, one part fewer) is not one.
pub(crate) fn is_reply_address(channel: &str) -> bool {
    channel
        .strip_prefix(INBOX_PREFIX)
        .is_some_and(|rest| rest.bytes().filter(|&b| b == b'.').count() == 2)
}

/// Headers of a reply that the requester does not get: those no subscriber gets, and those
/// that steered the reply to it (its own request-id is set instead).
fn is_reply_routing(name: &str) -> bool {
    crate::pubsub::publish::is_stripped(name)
        || [
            names::PUBLISH,
            names::REQUEST_ID,
            names::REPLY_TO,
            names::TIMEOUT,
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

/// True for one reply of a streamed answer that more replies follow.
pub(crate) fn is_partial(message: &Message) -> bool {
    message
        .header(names::PARTIAL)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Where a request's answers go.
#[derive(Debug, Clone)]
pub(crate) enum AnswerTo {
    /// A WebSocket client.
    Connection(Outbox),
    /// An HTTP gateway request waiting for its response (bounded: a reply that does not fit
    /// ends the response).
    Gateway(mpsc::Sender<Message>),
}

impl AnswerTo {
    fn send(&self, message: &Message) {
        match self {
            AnswerTo::Connection(outbox) => {
                let _ = outbox.push(frame(message.to_bytes()));
            }
            AnswerTo::Gateway(sender) => {
                let _ = sender.try_send(message.clone());
            }
        }
    }
}

/// One request that has not had its terminal answer yet.
struct Pending {
    request_id: Text,
    /// When it started, for `lhttp_request_duration_seconds`.
    started: Instant,
    timeout: Duration,
    deadline: Instant,
    answer_to: AnswerTo,
    /// The queue group the request waits in, while no member has taken it.
    waiting_in: Option<Weak<QueueGroup>>,
    /// In a cluster, a request nothing on this node took: the number of channels it went to
    /// over NATS. Once NATS has said "no responders" for each of them, it gets 503.
    remote_channels: Option<usize>,
    /// "No responders" notices from NATS so far (they may come before `remote_channels` is
    /// set: NATS can answer before the publishing call has returned).
    no_responders: usize,
}

/// A private address and the requests answered through it.
pub(crate) struct Inbox {
    /// `<node>.<random>`: the inbox's own address, after `_inbox.`.
    token: Box<str>,
    /// `<node>.<random>`: the first part of every reply address of this inbox, drawn apart
    /// from `token` so that a reply address tells nothing of the inbox's own address.
    replies: Box<str>,
    /// Where plain messages to `_inbox.<token>` go; `None` for the gateway's inbox, which only
    /// takes replies.
    owner: Option<Outbox>,
    /// By the random key that ends each reply address.
    pending: Mutex<HashMap<u64, Pending>>,
    /// Most requests waiting at once (429 beyond it).
    max_pending: usize,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// The address others publish to.
    pub(crate) fn address(&self) -> String {
        format!("{INBOX_PREFIX}{}", self.token)
    }

    /// Requests still waiting for their terminal answer.
    pub(crate) fn pending_count(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }
}

/// Every inbox of this node, and the request settings.
pub(crate) struct Requests {
    /// This process's part of every inbox address.
    node: String,
    /// By the inbox's own token. Hashed with foldhash (randomly seeded per map), as the hub:
    /// every reply looks its address up here.
    inboxes: DashMap<Box<str>, Arc<Inbox>, foldhash::quality::RandomState>,
    /// By the token of the inbox's reply addresses.
    replies: DashMap<Box<str>, Arc<Inbox>, foldhash::quality::RandomState>,
    config: RequestsConfig,
}

/// What happened to a message published to an inbox address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InboxDelivery {
    /// Delivered to the inbox's owner (a plain message or a reply).
    Delivered,
    /// No such inbox, or the request already had its terminal answer.
    Dropped,
}

impl Requests {
    pub(crate) fn new(config: RequestsConfig) -> Self {
        Requests {
            node: random_hex(4),
            inboxes: DashMap::default(),
            replies: DashMap::default(),
            config,
        }
    }

    /// This node's part of inbox addresses.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The node part of an inbox or reply address.
    pub(crate) fn node_of(address: &str) -> Option<&str> {
        address.strip_prefix(INBOX_PREFIX)?.split('.').next()
    }

    /// Opens an inbox; plain messages to it go to `owner`.
    pub(crate) fn open_inbox(&self, owner: Option<Outbox>, max_pending: usize) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox {
            token: format!("{}.{}", self.node, random_hex(16)).into_boxed_str(),
            // Only a key to find the inbox by, shown in every reply address: the reply's own
            // key is what cannot be guessed, so 64 bits keep addresses (and their checks) short.
            replies: format!("{}.{}", self.node, random_hex(8)).into_boxed_str(),
            owner,
            pending: Mutex::new(HashMap::new()),
            max_pending,
        });
        self.inboxes.insert(inbox.token.clone(), inbox.clone());
        self.replies.insert(inbox.replies.clone(), inbox.clone());
        inbox
    }

    /// Closes an inbox: its pending requests end without an answer (their requester is gone)
    /// and their timers stop.
    pub(crate) fn close_inbox(&self, inbox: &Inbox) {
        self.inboxes.remove(&inbox.token);
        self.replies.remove(&inbox.replies);
        inbox.pending.lock().expect("pending lock").clear();
    }

    /// Number of open inboxes.
    pub(crate) fn inbox_count(&self) -> usize {
        self.inboxes.len()
    }

    /// Pending requests over all inboxes.
    pub(crate) fn pending_count(&self) -> usize {
        self.inboxes.iter().map(|i| i.value().pending_count()).sum()
    }

    /// The timeout a request asked for (`timeout` header, milliseconds), within the configured
    /// maximum; the default when it asked for none.
    pub(crate) fn timeout_for(&self, header: Option<&str>) -> Result<Duration, Rejection> {
        let Some(value) = header else {
            return Ok(Duration::from_millis(self.config.default_timeout_ms));
        };
        let ms: u64 = value
            .parse()
            .map_err(|_| Rejection::bad_request("timeout must be a number of milliseconds"))?;
        if ms == 0 {
            return Err(Rejection::bad_request("timeout must be greater than 0"));
        }
        Ok(Duration::from_millis(ms.min(self.config.max_timeout_ms)))
    }

    /// Starts a request answered through `inbox`: returns its reply address. Refused with 429
    /// when the inbox already has the most pending requests allowed.
    pub(crate) fn start(
        &self,
        inbox: &Arc<Inbox>,
        request_id: Text,
        timeout: Duration,
        answer_to: AnswerTo,
        metrics: Arc<Metrics>,
    ) -> Result<String, Rejection> {
        let deadline = Instant::now() + timeout;
        let n = {
            let mut pending = inbox.pending.lock().expect("pending lock");
            if pending.len() >= inbox.max_pending {
                return Err(Rejection::limited(format!(
                    "{} requests are already waiting for answers",
                    pending.len()
                )));
            }
            // 64 random bits per request: knowing every other reply address of the inbox
            // does not help to find this one.
            let n = loop {
                let n = random_key();
                if !pending.contains_key(&n) {
                    break n;
                }
            };
            pending.insert(
                n,
                Pending {
                    request_id,
                    started: Instant::now(),
                    timeout,
                    deadline,
                    answer_to,
                    waiting_in: None,
                    remote_channels: None,
                    no_responders: 0,
                },
            );
            n
        };
        add(&metrics.requests, 1);
        tokio::spawn(expire(Arc::downgrade(inbox), n, deadline, metrics));
        Ok(format!("{INBOX_PREFIX}{}.{n:016x}", inbox.replies))
    }

    fn find(&self, address: &str) -> Option<(Arc<Inbox>, Option<u64>)> {
        let rest = address.strip_prefix(INBOX_PREFIX)?;
        // `<node>.<token>` (an inbox) or `<node>.<replies>.<key>` (a reply address).
        match rest.match_indices('.').nth(1) {
            Some((at, _)) => {
                let n = parse_key(&rest[at + 1..])?;
                let inbox = self.replies.get(&rest[..at])?.value().clone();
                Some((inbox, Some(n)))
            }
            None => Some((self.inboxes.get(rest)?.value().clone(), None)),
        }
    }

    /// In a cluster: the request at `address` reached nothing on this node and went to
    /// `channels` channels over NATS; it fails with 503 once NATS has said "no responders" for
    /// each of them.
    pub(crate) fn await_remote(&self, address: &str, channels: usize, metrics: &Metrics) {
        self.count_remote(address, metrics, |entry| {
            entry.remote_channels = Some(channels)
        });
    }

    /// NATS said nobody subscribes to one of the channels the request at `address` went to.
    pub(crate) fn no_remote_responders(&self, address: &str, metrics: &Metrics) {
        self.count_remote(address, metrics, |entry| entry.no_responders += 1);
    }

    fn count_remote(&self, address: &str, metrics: &Metrics, change: impl FnOnce(&mut Pending)) {
        let Some((inbox, Some(n))) = self.find(address) else {
            return;
        };
        let mut pending = inbox.pending.lock().expect("pending lock");
        let Some(entry) = pending.get_mut(&n) else {
            return;
        };
        change(entry);
        // `None`: something on this node took it, so NATS's notices do not matter.
        if entry
            .remote_channels
            .is_none_or(|channels| entry.no_responders < channels)
        {
            return;
        }
        let entry = pending.remove(&n).expect("entry found above");
        drop(pending);
        let rejection = Rejection::unavailable(
            "no responders: nobody is subscribed and no queue group took the request",
        );
        answer_failure(entry, &rejection, metrics);
    }

    /// Delivers `message`, published to the inbox or reply address `address`.
    pub(crate) fn deliver(
        &self,
        address: &str,
        message: &Message,
        metrics: &Metrics,
    ) -> InboxDelivery {
        let delivered = match self.find(address) {
            Some((inbox, None)) => match &inbox.owner {
                Some(outbox) => outbox
                    .push(frame(crate::pubsub::publish::encode_for_channel(
                        message, address,
                    )))
                    .is_ok(),
                None => false,
            },
            Some((inbox, Some(n))) => answer(&inbox, n, message, metrics),
            None => false,
        };
        if delivered {
            add(&metrics.deliveries, 1);
            InboxDelivery::Delivered
        } else {
            add(&metrics.request_late_replies, 1);
            InboxDelivery::Dropped
        }
    }

    /// Ends the request at reply address `address` with `rejection`, unless it already ended.
    pub(crate) fn fail(&self, address: &str, rejection: &Rejection, metrics: &Metrics) -> bool {
        let Some((inbox, Some(n))) = self.find(address) else {
            return false;
        };
        let Some(pending) = inbox.pending.lock().expect("pending lock").remove(&n) else {
            return false;
        };
        answer_failure(pending, rejection, metrics);
        true
    }

    /// True when `address` is an inbox of this node.
    pub(crate) fn is_local(&self, address: &str) -> bool {
        Requests::node_of(address) == Some(self.node.as_str())
    }

    /// False only when the request at `address` is known to have ended: requests of other
    /// nodes (in a cluster) cannot be checked from here.
    pub(crate) fn may_be_pending(&self, address: &str) -> bool {
        !self.is_local(address) || self.is_pending(address)
    }

    /// Forgets the request at `address` without answering it (its publish failed, and the
    /// failure is the answer).
    pub(crate) fn cancel(&self, address: &str) {
        if let Some((inbox, Some(n))) = self.find(address) {
            inbox.pending.lock().expect("pending lock").remove(&n);
        }
    }

    /// True while the request at `address` waits for its terminal answer.
    pub(crate) fn is_pending(&self, address: &str) -> bool {
        match self.find(address) {
            Some((inbox, Some(n))) => inbox.pending.lock().expect("pending lock").contains_key(&n),
            _ => false,
        }
    }

    /// Records that the request at `address` waits in `group` (`None`: a member took it).
    pub(crate) fn set_waiting(&self, address: &str, group: Option<Weak<QueueGroup>>) {
        if let Some((inbox, Some(n))) = self.find(address) {
            if let Some(pending) = inbox.pending.lock().expect("pending lock").get_mut(&n) {
                pending.waiting_in = group;
            }
        }
    }
}

/// Relays a reply to request `n` of `inbox`: a final reply ends the request, a partial one
/// pushes its deadline back.
fn answer(inbox: &Inbox, n: u64, reply: &Message, metrics: &Metrics) -> bool {
    let partial = is_partial(reply);
    let mut pending = inbox.pending.lock().expect("pending lock");
    let (request_id, answer_to) = if partial {
        let Some(entry) = pending.get_mut(&n) else {
            return false;
        };
        entry.deadline = Instant::now() + entry.timeout;
        entry.waiting_in = None;
        (entry.request_id.clone(), entry.answer_to.clone())
    } else {
        let Some(entry) = pending.remove(&n) else {
            return false;
        };
        observe_duration(metrics, entry.started);
        (entry.request_id, entry.answer_to)
    };
    drop(pending);
    answer_to.send(&answer_message(reply, request_id));
    true
}

/// The copy of a reply the requester gets: the responder's command, headers and body, without
/// the headers that routed it, and with the request's `request-id`. A reply that is itself a
/// request keeps its `reply-to` (set by the server to a reply address of the responder) and
/// `timeout`, so the requester can answer it.
fn answer_message(reply: &Message, request_id: Text) -> Message {
    let mut answer = reply.clone();
    let nested = reply.header(names::REPLY_TO).is_some_and(is_reply_address);
    answer.headers_mut().retain(|header| {
        let name = header.name();
        let asks_back =
            name.eq_ignore_ascii_case(names::REPLY_TO) || name.eq_ignore_ascii_case(names::TIMEOUT);
        (nested && asks_back) || !is_reply_routing(name)
    });
    answer
        .headers_mut()
        .append(names::REQUEST_ID, request_id)
        .expect("a received request-id is a valid header value");
    answer
}

/// Ends a request with `rejection`: counted by its status, sent as the one terminal answer.
fn answer_failure(entry: Pending, rejection: &Rejection, metrics: &Metrics) {
    count_failure(metrics, rejection.status());
    observe_duration(metrics, entry.started);
    entry
        .answer_to
        .send(&rejection.to_message(Some(&entry.request_id)));
}

/// Counts a request that ended, started at `started`, in `lhttp_request_duration_seconds`.
fn observe_duration(metrics: &Metrics, started: Instant) {
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    metrics
        .request_durations
        .observe(&crate::metrics::REQUEST_DURATION_BOUNDS_US, us);
}

fn count_failure(metrics: &Metrics, status: u16) {
    match status {
        503 => add(&metrics.request_no_responders, 1),
        504 => add(&metrics.request_timeouts, 1),
        _ => add(&metrics.request_failures, 1),
    }
}

/// The timer of one request: answers 504 (or 503 while it still waits in a queue group with
/// no member) when the deadline passes without a final reply. Partial replies move the
/// deadline; the timer then sleeps again.
async fn expire(inbox: Weak<Inbox>, n: u64, mut deadline: Instant, metrics: Arc<Metrics>) {
    loop {
        tokio::time::sleep_until(deadline).await;
        let Some(inbox) = inbox.upgrade() else {
            return;
        };
        let mut pending = inbox.pending.lock().expect("pending lock");
        let Some(entry) = pending.get(&n) else {
            return;
        };
        if entry.deadline > Instant::now() {
            deadline = entry.deadline;
            continue;
        }
        let entry = pending.remove(&n).expect("entry checked above");
        drop(pending);
        let nobody = entry
            .waiting_in
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|group| group.member_count() == 0);
        let rejection = if nobody {
            Rejection::unavailable(
                "no member of the queue group took the request before its timeout",
            )
        } else {
            Rejection::new(504, "request timed out")
        };
        answer_failure(entry, &rejection, &metrics);
        return;
    }
}

/// The key of a reply address: exactly 16 lower-case hex digits, as `start` writes it (a
/// loop of its own: `u64::from_str_radix` costs several times more, once per reply).
fn parse_key(key: &str) -> Option<u64> {
    if key.len() != 16 {
        return None;
    }
    key.bytes().try_fold(0u64, |n, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(digit))
    })
}

/// The random key of one reply address.
fn random_key() -> u64 {
    // As for `random_hex`: a predictable key would let others answer requests.
    getrandom::u64().expect("the operating system's random generator")
}

/// `n` random bytes, hex: inbox tokens nobody can guess.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The operating system's generator does not fail on the platforms we run on; if it ever
    // did, a predictable token would let others read replies, so stop rather than go on.
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    let mut token = String::with_capacity(2 * n);
    for b in bytes {
        use std::fmt::Write;
        let _ = write!(token, "{b:02x}");
    }
    token
}

/// The body of an answer to the `inbox` command.
pub(crate) fn inbox_answer(address: &str, request_id: Option<&Text>) -> Message {
    let mut builder = Message::builder("inbox").header(names::INBOX, address.to_owned());
    if let Some(id) = request_id {
        builder = builder.header(names::REQUEST_ID, id.clone());
    }
    builder
        .body(Bytes::new())
        .build()
        .expect("an inbox address is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_keys_are_sixteen_lower_case_hex_digits() {
        for n in [0, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(parse_key(&format!("{n:016x}")), Some(n));
        }
        for bad in [
            "",
            "1",
            "000000000000000g",
            "00000000000000000",
            "DEADBEEFDEADBEEF",
            "+00000000000000f",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_addresses_of_three_parts_are_reply_addresses() {
        assert!(is_reply_address(
            "_inbox.0a1b2c3d.0011223344556677.8899aabbccddeeff"
        ));
        assert!(!is_reply_address(
            "_inbox.0a1b2c3d.00112233445566778899aabbccddeeff"
        ));
        assert!(!is_reply_address("_inbox.a.b.c.d"));
        assert!(!is_reply_address("inbox.a.b.c"));
    }
}
