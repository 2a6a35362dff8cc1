//! The protocol's vocabulary: the header names and commands that the server gives a meaning
//! to, shared by the server and every client so that none of them re-declares (and drifts
//! from) another's spelling. docs/protocol.md says what each one does.

/// Space-separated channels to subscribe to.
pub const SUBSCRIBE: &str = "subscribe";
/// Space-separated channels to unsubscribe from.
pub const UNSUBSCRIBE: &str = "unsubscribe";
/// Space-separated channels to publish the message to; on a delivery, the one channel it came
/// through.
pub const PUBLISH: &str = "publish";
/// `METHOD URL` of an HTTP back end to call.
pub const UPSTREAM: &str = "upstream";
/// Byte offsets of the parts of the body.
pub const MULTIPART: &str = "multipart";
/// Copied into the answer to a message.
pub const REQUEST_ID: &str = "request-id";
/// Makes a published message a request; the server sets it to the reply address.
pub const REPLY_TO: &str = "reply-to";
/// A request's timeout, in milliseconds.
pub const TIMEOUT: &str = "timeout";
/// `true` on a reply that is not the last one of a streamed answer.
pub const PARTIAL: &str = "partial";
/// With `subscribe`: the queue group to join; on a delivery: the group it came through.
pub const QUEUE: &str = "queue";
/// With `subscribe` and `queue`: how many messages the member holds at once.
pub const CREDIT: &str = "credit";
/// On a queue-group delivery: the number its member acknowledges.
pub const DELIVERY_ID: &str = "delivery-id";
/// Space-separated delivery ids the sender acknowledges.
pub const ACK: &str = "ack";
/// `at-least-once`: a queue-group member that leaves without acknowledging the message hands
/// it to another member.
pub const DELIVERY: &str = "delivery";
/// With `queue`: channels whose group the sender leaves once its work is done.
pub const DRAIN: &str = "drain";
/// In the answer to the `inbox` command: the connection's inbox address.
pub const INBOX: &str = "inbox";
/// The JWT of an `auth` message.
pub const TOKEN: &str = "token";
/// The HTTP-style status of an answer (`ok`: 200; `error`: 400, 401, 403, 404, 413, 429, 503,
/// 504, ...).
pub const STATUS: &str = "status";
/// Why an `error`, an `unsubscribed` or a `close` happened, in a few words.
pub const REASON: &str = "reason";
/// On `unsubscribed`: the channel the server ended the subscription to; on `subscribed` and
/// `history`: the channel the answer is about; on a `history` read: the channel to read.
pub const CHANNEL: &str = "channel";
/// On a message of a channel that keeps history: its position in the channel (1, 2, 3, ...,
/// consecutive). Set by the server only.
pub const OFFSET: &str = "offset";
/// On a message of a channel that keeps history: the channel's epoch, which changes whenever
/// the history before it was lost (offsets are comparable only within one epoch). Set by the
/// server only.
pub const EPOCH: &str = "epoch";
/// With `subscribe` (one channel) and `epoch`, or on a `history` read: the offset of the last
/// message the client has; the server sends what came after it.
pub const SINCE: &str = "since";
/// With `subscribe` (one channel), or on a `history` read: send the last `N` messages kept.
pub const RECENT: &str = "recent";
/// On `subscribed` and `history`: how many history messages follow the answer.
pub const COUNT: &str = "count";
/// On `subscribed` and `history` after `since`: `true` when every message after `since` is
/// among those that follow, `false` when some were lost (too old, or another epoch).
pub const RECOVERED: &str = "recovered";
/// On a byte stream's `close`: the WebSocket close code of the event.
pub const CODE: &str = "code";
/// On `join`, `leave` and presence answers: a connection's random client id.
pub const CLIENT: &str = "client";
/// On `join` and `leave`: the member's authenticated user (empty without one).
pub const USER: &str = "user";
/// On a subscribe: the text other members see for this one in presence lists.
pub const PRESENCE_INFO: &str = "presence-info";
/// On a `presence` query: the most members to list (0: the count only).
pub const LIMIT: &str = "limit";
/// On a `presence` answer: how many members its body lists.
pub const LISTED: &str = "listed";

/// Commands the server answers itself or sends.
pub mod command {
    /// Authenticates a connection, or refreshes its token (`token` header).
    pub const AUTH: &str = "auth";
    /// Asks for the connection's inbox address.
    pub const INBOX: &str = "inbox";
    /// The answer to a message with a `request-id` that succeeded and got no other reply.
    pub const OK: &str = "ok";
    /// The answer to a message the server could not accept (`status`, `reason`).
    pub const ERROR: &str = "error";
    /// The server ended a subscription or queue-group membership (`channel`, `queue`,
    /// `reason`): the connection's rights no longer cover it.
    pub const UNSUBSCRIBED: &str = "unsubscribed";
    /// The answer to a `subscribe` with `since` or `recent` (`channel`, `epoch`, `offset`,
    /// `count`, `recovered`), followed by `count` history messages, then live ones.
    pub const SUBSCRIBED: &str = "subscribed";
    /// A read of a channel's history (`channel`, `since` and `epoch`, or `recent`); answered
    /// with `history` (the same headers as `subscribed`) followed by `count` messages.
    pub const HISTORY: &str = "history";
    /// Asks the server for a sign of life; answered with `pong` (copying `request-id`).
    pub const PING: &str = "ping";
    /// The answer to `ping`.
    pub const PONG: &str = "pong";
    /// Who is subscribed to a presence channel (`channel`, `limit`); answered with
    /// `presence` (`count`, `listed`, `client`) and a JSON array of members as body.
    pub const PRESENCE: &str = "presence";
    /// To a channel's subscribers: a member joined (`client`, `user`, its info as body).
    pub const JOIN: &str = "join";
    /// To a channel's subscribers: a member left.
    pub const LEAVE: &str = "leave";
    /// The last message of a byte stream the server closes (`code`, `reason`).
    pub const CLOSE: &str = crate::stream::CLOSE_COMMAND;
}

/// The close code of a connection the server's operator disconnected (lhttpd's
/// `POST /server/disconnect`), in the range WebSocket leaves to applications. A client must
/// not reconnect on its own after it: the operator wanted this client gone.
pub const CLOSE_DISCONNECTED: u16 = 4001;
