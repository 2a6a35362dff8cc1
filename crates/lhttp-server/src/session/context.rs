//! [`Context`]: one received message on its way through the filters and its processor.

use lhttp_proto::{Message, MessageBuilder, Text};

use crate::{Connection, ServerHandle, transport::outbox::SendError};

/// The message being handled, the connection it came from, and what has been done with it.
///
/// Replies go to this connection only. They are built from scratch (see
/// [`Context::reply_builder`]), so nothing set for a reply can leak into the copies that
/// subscribers receive, which are made from [`Context::message`].
pub struct Context<'c> {
    connection: &'c mut Connection,
    message: Message,
    request_id: Option<Text>,
    handled: bool,
    replied: bool,
    /// Position of the message's one `publish` header when the publish built-in found, before
    /// the processor, that the message is a plain publish to one valid, permitted channel.
    /// Cleared when the message is changed, so the publish after the processor only trusts
    /// it for the message it was found in.
    checked_publish: Option<usize>,
}

impl<'c> Context<'c> {
    pub(crate) fn new(connection: &'c mut Connection, message: Message) -> Self {
        let request_id = message.headers().get_text("request-id").cloned();
        Context {
            connection,
            message,
            request_id,
            handled: false,
            replied: false,
            checked_publish: None,
        }
    }

    /// The message. Filters and the processor may change it; the `publish` built-in runs last
    /// and publishes the message as it is then.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, to change it.
    pub fn message_mut(&mut self) -> &mut Message {
        self.checked_publish = None;
        &mut self.message
    }

    /// The connection it came from.
    pub fn connection(&self) -> &Connection {
        self.connection
    }

    /// The connection, to subscribe it or attach data.
    pub fn connection_mut(&mut self) -> &mut Connection {
        self.connection
    }

    /// The server, to publish.
    pub fn server(&self) -> &ServerHandle {
        self.connection.server()
    }

    /// The request's `request-id` header, as received.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// A builder for a reply: the request's command, and its `request-id` if it had one. Add
    /// any number of headers and a body, then pass the result to [`Context::reply`].
    pub fn reply_builder(&self) -> MessageBuilder {
        let mut builder = Message::builder(self.message.command_text().clone());
        if let Some(id) = &self.request_id {
            builder = builder.header("request-id", id.clone());
        }
        builder
    }

    /// Sends `reply` to this connection. Any number of replies may be sent.
    pub fn reply(&mut self, reply: &Message) -> Result<(), SendError> {
        self.replied = true;
        self.connection.send(reply)
    }

    /// Marks the message as handled, so that it is not answered with 404 "unknown command".
    /// A registered processor or a built-in header marks it automatically.
    pub fn set_handled(&mut self) {
        self.handled = true;
    }

    /// True when something handled the message.
    pub fn is_handled(&self) -> bool {
        self.handled
    }

    /// True when a reply was sent.
    pub fn has_replied(&self) -> bool {
        self.replied
    }

    /// Marks the message as answered later (by a task that holds a
    /// [`crate::ConnectionHandle`]), so that it gets no immediate `ok`.
    pub fn defer_reply(&mut self) {
        self.replied = true;
    }

    pub(crate) fn request_id_text(&self) -> Option<&Text> {
        self.request_id.as_ref()
    }

    /// Records that the message is a plain publish whose `publish` header, the `at`-th
    /// header, names one channel that was checked and permitted.
    pub(crate) fn set_checked_publish(&mut self, at: usize) {
        self.checked_publish = Some(at);
    }

    /// The channel recorded by [`Context::set_checked_publish`], if the message was not
    /// changed since.
    pub(crate) fn checked_publish(&self) -> Option<&str> {
        let at = self.checked_publish?;
        self.message.headers().iter().nth(at).map(|h| h.value())
    }
}
