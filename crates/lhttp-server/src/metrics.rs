//! [`Metrics`]: counters served at `GET /metrics` in the Prometheus text format.
//!
//! Plain atomics, updated with relaxed ordering: each counter is independent and read only for
//! reporting. Fan-out adds its delivery count once per channel, never once per subscriber.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// Counters of the whole server.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) messages_published: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) dropped_deliveries: AtomicU64,
    pub(crate) error_replies: AtomicU64,
    pub(crate) protocol_closes: AtomicU64,
    pub(crate) http_publish_requests: AtomicU64,
    pub(crate) upstream_calls: AtomicU64,
    pub(crate) upstream_failures: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) request_late_replies: AtomicU64,
    pub(crate) request_no_responders: AtomicU64,
    pub(crate) request_timeouts: AtomicU64,
    pub(crate) request_failures: AtomicU64,
    pub(crate) queue_deliveries: AtomicU64,
    pub(crate) queue_acks: AtomicU64,
    pub(crate) queue_redeliveries: AtomicU64,
    pub(crate) queue_lost: AtomicU64,
    pub(crate) queue_refused: AtomicU64,
    pub(crate) queue_expired: AtomicU64,
    pub(crate) queue_refused_bytes: AtomicU64,
    /// Messages of history channels published without being kept (a full budget, or a
    /// channel beyond `history.max_channels`).
    pub(crate) history_refused: AtomicU64,
    /// Kept messages dropped to make room for newer ones.
    pub(crate) history_trimmed: AtomicU64,
    /// Kept messages dropped at the end of their `history_ttl_secs`.
    pub(crate) history_expired: AtomicU64,
    /// Changes to the disk store dropped because its writer fell behind.
    pub(crate) history_write_dropped: AtomicU64,
    /// Subscribers left out of presence lists because `limits.max_presence_members` was reached.
    pub(crate) presence_refused: AtomicU64,
    pub(crate) gateway_requests: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) permission_denials: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) rate_limit_closes: AtomicU64,
    pub(crate) connections_refused_per_ip: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) http_body_timeouts: AtomicU64,
    // The edge defences: unfinished messages, HTTP connections, failed authentications.
    pub(crate) unfinished_budget_closes: AtomicU64,
    pub(crate) message_timeouts: AtomicU64,
    pub(crate) http_connections_refused_per_ip: AtomicU64,
    pub(crate) http_connections_refused: AtomicU64,
    pub(crate) auth_throttled: AtomicU64,
    pub(crate) auth_failure_closes: AtomicU64,
    /// Connections opened and closed, by `TransportKind`: their difference is the gauge
    /// `lhttp_connections_by_transport`.
    pub(crate) opened_by_transport: [AtomicU64; TransportKind::ALL.len()],
    pub(crate) closed_by_transport: [AtomicU64; TransportKind::ALL.len()],
    /// Sizes of the lhttp messages received (its sum and count are `bytes_received` and
    /// `messages_received`, counted beside it).
    pub(crate) message_sizes: Buckets<{ MESSAGE_SIZE_BOUNDS.len() }>,
    /// How long requests took to their terminal answer.
    pub(crate) request_durations: Durations<{ REQUEST_DURATION_BOUNDS_US.len() }>,
    /// How long published messages waited between their publish and their write to a
    /// subscriber's socket: one value per batch a connection's writer takes (its oldest
    /// message's wait).
    pub(crate) delivery_latencies: Durations<{ DELIVERY_LATENCY_BOUNDS_US.len() }>,
}

/// Upper bounds of the `lhttp_message_size_bytes` buckets.
pub(crate) const MESSAGE_SIZE_BOUNDS: [u64; 8] =
    [64, 256, 1024, 4096, 16384, 65536, 262_144, 1_048_576];

/// Upper bounds of the `lhttp_request_duration_seconds` buckets, in microseconds.
pub(crate) const REQUEST_DURATION_BOUNDS_US: [u64; 10] = [
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000, 30_000_000,
];

/// Upper bounds of the `lhttp_delivery_latency_seconds` buckets, in microseconds.
pub(crate) const DELIVERY_LATENCY_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000, 10_000_000,
];

/// The counts of a histogram's buckets, each counting the values up to its bound and above
/// the previous one (made cumulative when rendered), and of the values above the last bound.
/// One relaxed add per value.
#[derive(Debug)]
pub(crate) struct Buckets<const N: usize> {
    counts: [AtomicU64; N],
    over: AtomicU64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Buckets<N> {
    /// Counts `value` in the first bucket whose bound (of `bounds`) holds it.
    pub(crate) fn observe(&self, bounds: &[u64; N], value: u64) {
        match bounds.iter().position(|&bound| value <= bound) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.over.fetch_add(1, Relaxed),
        };
    }

    /// The histogram `name` in the text format: cumulative buckets with bounds shown as
    /// `label(bound)`, and `sum` as its `_sum`.
    fn render(
        &self,
        out: &mut String,
        (name, help): (&str, &str),
        bounds: &[u64; N],
        label: impl Fn(u64) -> String,
        sum: String,
    ) {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
        let mut cumulative = 0;
        for (bucket, &bound) in self.counts.iter().zip(bounds) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", label(bound));
        }
        let count = cumulative + self.over.load(Relaxed);
        let _ = write!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}\n"
        );
    }
}

/// A histogram of durations kept in microseconds and shown in seconds, with its own sum (two
/// relaxed adds per value).
#[derive(Debug, Default)]
pub(crate) struct Durations<const N: usize> {
    buckets: Buckets<N>,
    sum_us: AtomicU64,
}

impl<const N: usize> Durations<N> {
    /// Counts a duration of `us` microseconds against `bounds` (microseconds).
    pub(crate) fn observe(&self, bounds: &[u64; N], us: u64) {
        self.buckets.observe(bounds, us);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, name_help: (&str, &str), bounds: &[u64; N]) {
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        self.buckets.render(
            out,
            name_help,
            bounds,
            |us| format!("{}", us as f64 / 1e6),
            format!("{sum:.6}"),
        );
    }
}

/// Gauges read from the hub at scrape time.
#[derive(serde::Serialize)]
pub(crate) struct Gauges {
    pub connections: u64,
    pub http_connections: u64,
    pub unfinished_message_bytes: u64,
    pub channels: u64,
    pub subscriptions: u64,
    pub inboxes: u64,
    pub pending_requests: u64,
    pub queue_groups: u64,
    pub queue_members: u64,
    pub queued_bytes: u64,
    pub history_channels: u64,
    pub history_bytes: u64,
    pub presence_members: u64,
    pub presence_rooms: u64,
    pub presence_nodes: u64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl Metrics {
    /// The main totals since start, by name, for `GET /server/info` (the admin page plots
    /// their rates). `/metrics` has them all.
    pub(crate) fn totals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let read = |counter: &AtomicU64| counter.load(Relaxed);
        [
            ("connections_opened", read(&self.connections_opened)),
            ("connections_closed", read(&self.connections_closed)),
            ("connections_refused", read(&self.connections_refused)),
            ("messages_received", read(&self.messages_received)),
            ("received_bytes", read(&self.bytes_received)),
            ("messages_published", read(&self.messages_published)),
            ("deliveries", read(&self.deliveries)),
            ("messages_sent", read(&self.messages_sent)),
            ("sent_bytes", read(&self.bytes_sent)),
            ("slow_consumers", read(&self.slow_consumers)),
            ("dropped_deliveries", read(&self.dropped_deliveries)),
            ("error_replies", read(&self.error_replies)),
            ("http_publish_requests", read(&self.http_publish_requests)),
            ("requests", read(&self.requests)),
            ("auth_failures", read(&self.auth_failures)),
            ("permission_denials", read(&self.permission_denials)),
            ("rate_limited", read(&self.rate_limited)),
        ]
        .into_iter()
        .collect()
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub(crate) fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP lhttp_{name} {help}\n# TYPE lhttp_{name} gauge\nlhttp_{name} {value}\n"
            );
        };
        gauge(
            "connections",
            "Open connections (every transport; by transport: lhttp_connections_by_transport).",
            gauges.connections,
        );
        gauge(
            "http_connections",
            "Open TCP connections speaking HTTP (not upgraded to WebSocket).",
            gauges.http_connections,
        );
        gauge(
            "unfinished_message_bytes",
            "Bytes held for large WebSocket messages that have not fully arrived (limits.unfinished_message_bytes).",
            gauges.unfinished_message_bytes,
        );
        gauge(
            "channels",
            "Channels with at least one local subscriber.",
            gauges.channels,
        );
        gauge(
            "subscriptions",
            "Subscriptions of local connections.",
            gauges.subscriptions,
        );
        gauge(
            "inboxes",
            "Open inboxes (connections that made requests, and the gateway).",
            gauges.inboxes,
        );
        gauge(
            "pending_requests",
            "Requests waiting for their terminal answer.",
            gauges.pending_requests,
        );
        gauge(
            "queue_groups",
            "Queue groups (with members, waiting work, or declared by a gateway route).",
            gauges.queue_groups,
        );
        gauge(
            "queue_members",
            "Queue-group memberships of local connections.",
            gauges.queue_members,
        );
        gauge(
            "queued_bytes",
            "Bytes of queue-group work held (waiting, or delivered and not acknowledged).",
            gauges.queued_bytes,
        );
        gauge(
            "history_channels",
            "Channels with a history (a stream of kept messages).",
            gauges.history_channels,
        );
        gauge(
            "history_bytes",
            "Bytes of channel history held in memory.",
            gauges.history_bytes,
        );
        gauge(
            "presence_members",
            "Members of channels with presence, over every room.",
            gauges.presence_members,
        );
        gauge(
            "presence_rooms",
            "Channels with presence that have members.",
            gauges.presence_rooms,
        );
        gauge(
            "presence_nodes",
            "Other cluster nodes whose presence members this node holds.",
            gauges.presence_nodes,
        );
        let counters: [(&str, &str, &AtomicU64); 23] = [
            (
                "auth_failures_total",
                "Tokens refused (at the upgrade or in an auth message).",
                &self.auth_failures,
            ),
            (
                "permission_denials_total",
                "Subscribes and publishes refused by the channel rules (403).",
                &self.permission_denials,
            ),
            (
                "connections_opened_total",
                "WebSocket connections accepted.",
                &self.connections_opened,
            ),
            (
                "connections_closed_total",
                "WebSocket connections ended.",
                &self.connections_closed,
            ),
            (
                "connections_refused_total",
                "Upgrade requests refused at the connection limit.",
                &self.connections_refused,
            ),
            (
                "messages_received_total",
                "lhttp messages received over WebSocket.",
                &self.messages_received,
            ),
            (
                "received_bytes_total",
                "Bytes of lhttp messages received over WebSocket.",
                &self.bytes_received,
            ),
            (
                "messages_published_total",
                "Messages published to a channel (once per channel).",
                &self.messages_published,
            ),
            (
                "deliveries_total",
                "Published messages queued for a subscriber.",
                &self.deliveries,
            ),
            (
                "messages_sent_total",
                "WebSocket messages written to clients.",
                &self.messages_sent,
            ),
            (
                "sent_bytes_total",
                "Bytes of WebSocket messages written to clients.",
                &self.bytes_sent,
            ),
            (
                "slow_consumers_total",
                "Clients disconnected because their outbound queue was full.",
                &self.slow_consumers,
            ),
            (
                "dropped_deliveries_total",
                "Deliveries not queued because the subscriber was too slow.",
                &self.dropped_deliveries,
            ),
            (
                "error_replies_total",
                "error messages sent to clients.",
                &self.error_replies,
            ),
            (
                "protocol_closes_total",
                "Connections closed for a WebSocket violation (1007, 1009, ...).",
                &self.protocol_closes,
            ),
            (
                "http_publish_requests_total",
                "POST /publish requests.",
                &self.http_publish_requests,
            ),
            (
                "upstream_calls_total",
                "Upstream HTTP calls started.",
                &self.upstream_calls,
            ),
            (
                "upstream_failures_total",
                "Upstream calls that failed or timed out (answered 502 or 504).",
                &self.upstream_failures,
            ),
            (
                "rate_limited_messages_total",
                "Messages refused with 429 for exceeding the connection's message rate.",
                &self.rate_limited,
            ),
            (
                "rate_limit_closes_total",
                "Connections closed with 1008 for persistently exceeding their message rate.",
                &self.rate_limit_closes,
            ),
            (
                "connections_refused_per_ip_total",
                "Upgrade requests refused with 429 at the per-IP connection limit.",
                &self.connections_refused_per_ip,
            ),
            (
                "handshake_timeouts_total",
                "TCP connections closed because their request head (WebSocket handshake or HTTP request) did not arrive in time.",
                &self.handshake_timeouts,
            ),
            (
                "http_body_timeouts_total",
                "POST /publish requests answered 408 because the body did not arrive in time.",
                &self.http_body_timeouts,
            ),
        ];
        let messaging: [(&str, &str, &AtomicU64); 18] = [
            (
                "requests_total",
                "Requests started (messages with reply-to, and gateway requests).",
                &self.requests,
            ),
            (
                "request_late_replies_total",
                "Messages to an inbox or reply address that no longer waits (dropped).",
                &self.request_late_replies,
            ),
            (
                "request_no_responders_total",
                "Requests answered 503: nobody subscribed, queue full, or no member in time.",
                &self.request_no_responders,
            ),
            (
                "request_timeouts_total",
                "Requests answered 504.",
                &self.request_timeouts,
            ),
            (
                "request_failures_total",
                "Requests answered with another error (502: worker gone).",
                &self.request_failures,
            ),
            (
                "queue_deliveries_total",
                "Messages handed to a queue-group member.",
                &self.queue_deliveries,
            ),
            (
                "queue_acks_total",
                "Queue-group deliveries acknowledged.",
                &self.queue_acks,
            ),
            (
                "queue_redeliveries_total",
                "At-least-once messages handed on after their member left.",
                &self.queue_redeliveries,
            ),
            (
                "queue_lost_total",
                "Unacknowledged plain messages lost with the member that left.",
                &self.queue_lost,
            ),
            (
                "queue_refused_total",
                "Messages refused because a group's waiting queue was full.",
                &self.queue_refused,
            ),
            (
                "queue_expired_total",
                "Plain messages dropped after waiting too long in a group.",
                &self.queue_expired,
            ),
            (
                "queue_byte_limit_refusals_total",
                "Messages refused by a queue group because their publisher's share (429) or the server's budget (503) of queued bytes was full.",
                &self.queue_refused_bytes,
            ),
            (
                "gateway_requests_total",
                "HTTP requests received by gateway routes.",
                &self.gateway_requests,
            ),
            (
                "history_refused_total",
                "Messages of history channels published without being kept (history.max_bytes or history.max_channels reached).",
                &self.history_refused,
            ),
            (
                "history_trimmed_total",
                "Kept messages dropped to make room for newer ones.",
                &self.history_trimmed,
            ),
            (
                "history_expired_total",
                "Kept messages dropped at the end of their history_ttl_secs.",
                &self.history_expired,
            ),
            (
                "history_write_dropped_total",
                "Changes to the history store dropped because its writer fell behind (the next start gives every channel a new epoch).",
                &self.history_write_dropped,
            ),
            (
                "presence_refused_total",
                "Subscribers left out of presence lists because limits.max_presence_members was reached.",
                &self.presence_refused,
            ),
        ];
        let edge: [(&str, &str, &AtomicU64); 6] = [
            (
                "unfinished_budget_closes_total",
                "Connections closed with 1013 because unfinished messages held the whole limits.unfinished_message_bytes.",
                &self.unfinished_budget_closes,
            ),
            (
                "message_timeouts_total",
                "Connections closed with 1008 because a message was not complete within limits.message_timeout_ms.",
                &self.message_timeouts,
            ),
            (
                "http_connections_refused_per_ip_total",
                "TCP connections refused (429) at limits.max_http_connections_per_ip.",
                &self.http_connections_refused_per_ip,
            ),
            (
                "http_connections_refused_total",
                "TCP connections refused (503) at limits.max_http_connections.",
                &self.http_connections_refused,
            ),
            (
                "auth_throttled_total",
                "Tokens refused with 429, unverified, from addresses with too many recent failures.",
                &self.auth_throttled,
            ),
            (
                "auth_failure_closes_total",
                "Connections closed with 1008 after too many refused auth messages.",
                &self.auth_failure_closes,
            ),
        ];
        for (name, help, counter) in counters.into_iter().chain(messaging).chain(edge) {
            let _ = write!(
                out,
                "# HELP lhttp_{name} {help}\n# TYPE lhttp_{name} counter\nlhttp_{name} {}\n",
                counter.load(Relaxed)
            );
        }
        let _ = write!(
            out,
            "# HELP lhttp_connections_by_transport Open connections, by transport.\n\
             # TYPE lhttp_connections_by_transport gauge\n"
        );
        for kind in TransportKind::ALL {
            let i = kind as usize;
            let open = self.opened_by_transport[i]
                .load(Relaxed)
                .saturating_sub(self.closed_by_transport[i].load(Relaxed));
            let _ = writeln!(
                out,
                "lhttp_connections_by_transport{{transport=\"{}\"}} {open}",
                kind.label()
            );
        }
        self.message_sizes.render(
            &mut out,
            (
                "lhttp_message_size_bytes",
                "Sizes of the lhttp messages received from clients, in bytes.",
            ),
            &MESSAGE_SIZE_BOUNDS,
            |bound| bound.to_string(),
            self.bytes_received.load(Relaxed).to_string(),
        );
        self.request_durations.render(
            &mut out,
            (
                "lhttp_request_duration_seconds",
                "Time from a request to its terminal answer (reply, 503, 504 or 502), in seconds.",
            ),
            &REQUEST_DURATION_BOUNDS_US,
        );
        self.delivery_latencies.render(
            &mut out,
            (
                "lhttp_delivery_latency_seconds",
                "Time from a publish to the write of its copy to a subscriber's socket, in seconds: the oldest message of each batch written.",
            ),
            &DELIVERY_LATENCY_BOUNDS_US,
        );
        let _ = write!(
            out,
            "# HELP lhttp_build_info The lhttp-server build: its version, as a label; always 1.\n\
             # TYPE lhttp_build_info gauge\nlhttp_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        process::render(&mut out);
        out
    }
}

/// The standard `process_*` metrics of Prometheus client libraries, read from `/proc/self` at
/// each scrape (Linux; elsewhere they are left out).
mod process {
    use std::fmt::Write;

    /// Clock ticks per second of `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`, 100 on
    /// every Linux platform lhttpd runs on).
    const TICKS_PER_SECOND: f64 = 100.0;
    /// Bytes per page of `/proc/self/statm` (4 KiB on x86-64 and the usual arm64 kernels).
    const PAGE_BYTES: u64 = 4096;

    pub(super) fn render(out: &mut String) {
        let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok() else {
            return;
        };
        // The fields after the command name, which is in parentheses and may hold spaces.
        let Some((_, fields)) = stat.rsplit_once(')') else {
            return;
        };
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            metric(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                format!("{:.2}", (user + system) as f64 / TICKS_PER_SECOND),
            );
        }
        if let Some(virtual_bytes) = field(23) {
            metric(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size, in bytes.",
                virtual_bytes.to_string(),
            );
        }
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|m| m.split_whitespace().nth(1)?.parse::<u64>().ok())
        {
            metric(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size, in bytes (kernel socket buffers are not in it).",
                (pages * PAGE_BYTES).to_string(),
            );
        }
        if let (Some(start_ticks), Some(boot)) = (field(22), boot_time()) {
            metric(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                format!("{:.2}", boot as f64 + start_ticks as f64 / TICKS_PER_SECOND),
            );
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            metric(
                "process_open_fds",
                "gauge",
                "Open file descriptors.",
                entries.count().to_string(),
            );
        }
        if let Some(max) = max_open_files() {
            metric(
                "process_max_fds",
                "gauge",
                "The open-files limit (soft).",
                max.to_string(),
            );
        }
    }

    /// When the machine booted, in seconds since the Unix epoch (`btime` of `/proc/stat`).
    fn boot_time() -> Option<u64> {
        std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
    }

    /// The soft limit of `Max open files` in `/proc/self/limits`.
    fn max_open_files() -> Option<u64> {
        std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix("Max open files")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
    }
}

/// The transports a connection can come over, as `/metrics` labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransportKind {
    /// `ws://`.
    WebSocket = 0,
    /// `wss://`.
    WebSocketTls,
    /// `tcp://`.
    Tcp,
    /// `tls://`.
    Tls,
    /// `unix://`.
    Unix,
    /// [`crate::ServerHandle::connect_in_process`].
    InProcess,
}

impl TransportKind {
    /// Every kind, in label order.
    pub(crate) const ALL: [TransportKind; 6] = [
        TransportKind::WebSocket,
        TransportKind::WebSocketTls,
        TransportKind::Tcp,
        TransportKind::Tls,
        TransportKind::Unix,
        TransportKind::InProcess,
    ];

    /// The `transport` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "ws",
            TransportKind::WebSocketTls => "wss",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Unix => "unix",
            TransportKind::InProcess => "in_process",
        }
    }
}
