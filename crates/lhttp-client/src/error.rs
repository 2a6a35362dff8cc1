//! [`Error`]: everything a client operation can fail with.

use lhttp_proto::names;
use std::time::Duration;

use lhttp_proto::{BuildError, Message};
use thiserror::Error;

/// Why a client operation failed.
///
/// Server refusals carry the server's `status` and `reason`; everything else is about the
/// connection or the caller's input.
///
/// ```
/// use lhttp_client::Error;
/// fn explain(e: &Error) -> String {
///     match e {
///         Error::Server { status: 400, reason, .. } => format!("bad request: {reason}"),
///         Error::Server { status, reason, .. } => format!("refused ({status}): {reason}"),
///         other => other.to_string(),
///     }
/// }
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not one the client can connect to (`ws://`, `wss://`, `tcp://host:port`,
    /// `tls://host:port`, `unix:///path`), or is malformed.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TLS settings given to the builder are unusable: PEM text without a certificate, a
    /// private key that does not parse or does not match its certificate.
    #[error("invalid TLS settings: {0}")]
    Tls(String),
    /// The server could not be reached, the TLS handshake failed, or the server refused the
    /// WebSocket upgrade or (on a stream) the token's `auth`.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL the client tried.
        url: String,
        /// What went wrong (from the socket, the handshake or the server's refusal).
        reason: String,
    },
    /// The server answered with an `error` message.
    #[error("server answered {status}: {reason}")]
    Server {
        /// The `status` header (HTTP-style: 400, 403, 404, 429, ...); 0 if it was missing.
        status: u16,
        /// The `reason` header; empty if it was missing.
        reason: String,
        /// The whole answer.
        message: Box<Message>,
    },
    /// No answer arrived within the request timeout.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// The client is not connected right now (it may be reconnecting).
    #[error("not connected to the server")]
    NotConnected,
    /// The connection was lost before the answer arrived.
    #[error("connection lost before the server answered")]
    Disconnected,
    /// The client was closed (by [`crate::Client::close`], or because it stopped reconnecting).
    #[error("client is closed")]
    Closed,
    /// A channel name is empty or contains whitespace or control characters, or no channel was
    /// given.
    #[error("invalid channel name {0:?}")]
    InvalidChannel(String),
    /// A command or header given to a helper is not valid lhttp.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The server's answer is not shaped as docs/protocol.md says (another server, or
    /// another version of it).
    #[error("unexpected answer: {0}")]
    UnexpectedAnswer(String),
}

impl Error {
    /// The server's status for [`Error::Server`], `None` otherwise.
    ///
    /// ```
    /// # use lhttp_client::Error;
    /// assert_eq!(Error::NotConnected.status(), None);
    /// ```
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Turns an `error` answer into [`Error::Server`]; any other message is returned as is.
    pub(crate) fn check_answer(message: Message) -> Result<Message, Error> {
        if message.command() != names::command::ERROR {
            return Ok(message);
        }
        let status = message
            .header(names::STATUS)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let reason = message.header(names::REASON).unwrap_or_default().to_owned();
        Err(Error::Server {
            status,
            reason,
            message: Box::new(message),
        })
    }
}
