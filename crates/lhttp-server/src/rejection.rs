//! [`Rejection`]: why the server will not do what a message asks, as the client sees it.

use std::borrow::Cow;

use lhttp_proto::{Message, Text};

/// A refusal that becomes an `error` message to the client:
///
/// ```text
/// LHTTP/1.0 error
/// status:<code>
/// reason:<short text>
/// request-id:<copied from the request, if it had one>
/// ```
///
/// Codes follow HTTP: 400 malformed, 403 forbidden, 404 unknown, 413 too large,
/// 429 limit reached, 503 unavailable, 504 timed out. The connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Rejection {
    status: u16,
    reason: Cow<'static, str>,
}

impl Rejection {
    /// A rejection with any status. `reason` should be short and must not echo message bodies.
    pub fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            status,
            reason: reason.into(),
        }
    }

    /// 400: the message is malformed.
    pub fn bad_request(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection::new(400, reason)
    }

    /// 403: the client may not do this.
    pub fn forbidden(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection::new(403, reason)
    }

    /// 404: nothing handles this.
    pub fn not_found(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection::new(404, reason)
    }

    /// 413: the message is too large.
    pub fn too_large(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection::new(413, reason)
    }

    /// 429: a per-client limit is reached.
    pub fn limited(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection::new(429, reason)
    }

    /// 503: the server cannot do it now.
    pub fn unavailable(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection::new(503, reason)
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The `error` message sent to the client; `request_id` is copied into it.
    pub fn to_message(&self, request_id: Option<&Text>) -> Message {
        lhttp_proto::answer::error(self.status, &self.reason, request_id)
    }
}

impl From<lhttp_proto::ParseError> for Rejection {
    fn from(e: lhttp_proto::ParseError) -> Self {
        Rejection::new(e.status(), e.to_string())
    }
}
