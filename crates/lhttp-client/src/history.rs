//! Channel history as the client sees it: a [`Position`] in a channel, the [`Gap`] a
//! subscription reports when a reconnection could not recover everything, the [`Event`]s of
//! [`crate::Subscription::recv_event`], and the [`HistoryQuery`] and [`History`] of
//! [`crate::Client::history`].

use lhttp_proto::{Message, names};

/// Where a channel that keeps history stands: an epoch (the channel's history generation) and
/// an offset in it (1, 2, 3, ... per message). Offsets compare only within one epoch.
///
/// ```
/// use lhttp_client::{Message, Position};
/// let message = Message::builder("chat")
///     .header("publish", "chat.lobby")
///     .header("offset", "41")
///     .header("epoch", "9f3c1a0b5d2e7788")
///     .build()?;
/// let position = Position::of(&message).expect("a message of a channel with history");
/// assert_eq!(position.offset, 41);
/// assert_eq!(position.epoch, "9f3c1a0b5d2e7788");
/// # Ok::<(), lhttp_client::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The channel's epoch.
    pub epoch: String,
    /// The offset of a message in that epoch (0: before the first).
    pub offset: u64,
}

impl Position {
    /// The position of `message`, from its `offset` and `epoch` headers (set by the server on
    /// every message of a channel that keeps history); `None` for any other message.
    pub fn of(message: &Message) -> Option<Position> {
        let (epoch, offset) = position_headers(message)?;
        Some(Position {
            epoch: epoch.to_owned(),
            offset,
        })
    }
}

/// The `epoch` and `offset` headers of a message, without copying.
pub(crate) fn position_headers(message: &Message) -> Option<(&str, u64)> {
    let offset = message.header(names::OFFSET)?.parse().ok()?;
    Some((message.header(names::EPOCH)?, offset))
}

/// Some messages of a channel were published while the client was disconnected and the server
/// could not send them when it came back: they are older than what the channel keeps, or the
/// channel's history was lost (a new epoch, say after a restart of a server that keeps history
/// in memory). The subscription goes on with the messages published since; an application
/// that shows the channel's content should reload it, for example with
/// [`crate::Client::history`] and [`HistoryQuery::Recent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Gap {
    /// The channel.
    pub channel: String,
    /// The last position the client had: some of what came after it is lost.
    pub last: Position,
    /// The channel's epoch now; `None` when the channel keeps no history any more.
    pub epoch: Option<String>,
    /// The channel's last offset now: live messages continue after it.
    pub offset: u64,
}

/// What [`crate::Subscription::recv_event`] returns: a message, or a gap in a channel's
/// messages at this point of the stream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A message, as [`crate::Subscription::recv`] returns it.
    Message(Message),
    /// Messages of a channel were lost while disconnected (see [`Gap`]).
    Gap(Gap),
}

/// What [`crate::Client::history`] reads (and what [`crate::Client::subscribe_recent`] asks
/// for first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The last `n` messages the server keeps.
    Recent(usize),
    /// The messages after this position.
    Since(Position),
}

/// A channel's history as [`crate::Client::history`] read it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct History {
    /// The channel.
    pub channel: String,
    /// The messages, oldest first, exactly as subscribers received them.
    pub messages: Vec<Message>,
    /// The channel's epoch; `None` when it keeps no history.
    pub epoch: Option<String>,
    /// The channel's last offset (0 before its first message, or without history).
    pub offset: u64,
    /// After [`HistoryQuery::Since`]: `false` when some messages after the position are no
    /// longer kept (then none is returned); `None` after [`HistoryQuery::Recent`].
    pub recovered: Option<bool>,
}

/// The headers of a `subscribed` or `history` answer that say where the channel stands.
pub(crate) struct Answer<'a> {
    pub(crate) channel: &'a str,
    pub(crate) epoch: Option<&'a str>,
    pub(crate) offset: u64,
    pub(crate) count: usize,
    pub(crate) recovered: Option<bool>,
}

impl<'a> Answer<'a> {
    pub(crate) fn of(message: &'a Message) -> Option<Answer<'a>> {
        let number = |name| message.header(name).and_then(|v| v.parse().ok());
        Some(Answer {
            channel: message.header(names::CHANNEL)?,
            epoch: message.header(names::EPOCH),
            offset: number(names::OFFSET).unwrap_or(0),
            count: number(names::COUNT)
                .and_then(|n: u64| usize::try_from(n).ok())
                .unwrap_or(0),
            recovered: message.header(names::RECOVERED).map(|v| v == "true"),
        })
    }
}
