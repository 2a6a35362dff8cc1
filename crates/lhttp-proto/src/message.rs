//! [`Message`]: command, headers and body; built with [`MessageBuilder`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::{Headers, Text, error::BuildError, validate};

/// The start of every lhttp message, including the one space before the command.
pub const PREFIX: &[u8] = b"LHTTP/1.0 ";

/// One lhttp message.
///
/// A parsed message shares the received buffer: command, header names and values, and body are
/// views into it. A message is always valid: [`Message::encode`] produces bytes that
/// [`Message::parse`] turns back into an equal message.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) command: Text,
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
    /// The bytes a parsed message came from (see [`Message::as_received`]); `None` for a built
    /// one. Not part of the message's value: equality ignores it.
    pub(crate) raw: Option<Bytes>,
}

impl PartialEq for Message {
    fn eq(&self, other: &Message) -> bool {
        self.command == other.command && self.headers == other.headers && self.body == other.body
    }
}

impl Eq for Message {}

impl Message {
    /// Starts building a message with `command`.
    ///
    /// ```
    /// use lhttp_proto::Message;
    /// let msg = Message::builder("chat")
    ///     .header("publish", "chatroom")
    ///     .body("hello")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(&msg.to_bytes()[..], b"LHTTP/1.0 chat\r\npublish:chatroom\r\n\r\nhello");
    /// ```
    pub fn builder(command: impl Into<Text>) -> MessageBuilder {
        MessageBuilder {
            command: command.into(),
            headers: Headers::new(),
            body: Bytes::new(),
            error: None,
        }
    }

    /// The command.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The command as shared text.
    pub fn command_text(&self) -> &Text {
        &self.command
    }

    /// Replaces the command.
    pub fn set_command(&mut self, command: impl Into<Text>) -> Result<(), BuildError> {
        let command = command.into();
        if !validate::is_command(command.as_bytes()) {
            return Err(BuildError::InvalidCommand(command.to_string()));
        }
        self.command = command;
        Ok(())
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, to change them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Shorthand for `headers().get(name)`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body: every byte after the blank line that ends the headers.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: impl Into<Bytes>) {
        self.body = body.into();
    }

    /// Exact number of bytes [`Message::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        PREFIX.len() + self.command.len() + 2 + self.headers.encoded_len() + 2 + self.body.len()
    }

    /// Appends the wire form to `buf`: the start line, `name:value` per header in order (no
    /// space after the colon, which the original JavaScript SDK needs), a blank line, the body.
    /// The blank line is always written, so that decoders that look for it find the body.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(PREFIX);
        buf.put_slice(self.command.as_bytes());
        buf.put_slice(b"\r\n");
        for header in &self.headers {
            buf.put_slice(header.name().as_bytes());
            buf.put_u8(b':');
            buf.put_slice(header.value().as_bytes());
            buf.put_slice(b"\r\n");
        }
        buf.put_slice(b"\r\n");
        buf.put_slice(&self.body);
    }

    /// The wire form in a new buffer of exactly the right size.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// The bytes this message was parsed from, when they are exactly what [`Message::encode`]
    /// would write for it now: nothing was changed since parsing, and the sender used the
    /// canonical form (CRLF line ends, no spaces around header values). Forwarding them spares
    /// encoding a copy. Checked region by region: a part still viewing its place in the bytes
    /// costs a pointer comparison, any other a byte comparison.
    ///
    /// ```
    /// use lhttp_proto::Message;
    /// let canonical = Message::parse("LHTTP/1.0 chat\r\npublish:room\r\n\r\nhi".into()).unwrap();
    /// assert_eq!(canonical.as_received().map(|b| &b[..]), Some(&b"LHTTP/1.0 chat\r\npublish:room\r\n\r\nhi"[..]));
    /// let spaced = Message::parse("LHTTP/1.0 chat\npublish: room\n\nhi".into()).unwrap();
    /// assert_eq!(spaced.as_received(), None);
    /// let mut changed = canonical.clone();
    /// changed.set_body("bye");
    /// assert_eq!(changed.as_received(), None);
    /// ```
    pub fn as_received(&self) -> Option<&Bytes> {
        let raw = self.raw.as_ref()?;
        // Parsing checked that the bytes start with the prefix, and they cannot have changed.
        let mut at = PREFIX.len();
        let mut fits = place(raw, &mut at, self.command.as_bytes()) && line_end(raw, &mut at);
        for header in &self.headers {
            fits = fits
                && place(raw, &mut at, header.name().as_bytes())
                && place(raw, &mut at, b":")
                && place(raw, &mut at, header.value().as_bytes())
                && line_end(raw, &mut at);
        }
        (fits && line_end(raw, &mut at) && place(raw, &mut at, &self.body) && at == raw.len())
            .then_some(raw)
    }
}

/// Builds a [`Message`], checking the command and every header; the first invalid part is
/// reported by [`MessageBuilder::build`].
#[derive(Debug)]
#[must_use]
pub struct MessageBuilder {
    command: Text,
    headers: Headers,
    body: Bytes,
    error: Option<BuildError>,
}

impl MessageBuilder {
    /// Appends a header (see [`Headers::append`]).
    pub fn header(mut self, name: impl Into<Text>, value: impl Into<Text>) -> Self {
        if self.error.is_none() {
            if let Err(e) = self.headers.append(name, value) {
                self.error = Some(e);
            }
        }
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The message, or the first thing that was invalid.
    pub fn build(self) -> Result<Message, BuildError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !validate::is_command(self.command.as_bytes()) {
            return Err(BuildError::InvalidCommand(self.command.to_string()));
        }
        Ok(Message {
            command: self.command,
            headers: self.headers,
            body: self.body,
            raw: None,
        })
    }
}

/// Whether `part` is what `raw` holds at `at` (by address when it is a view of that very place,
/// else by content); moves `at` past it.
#[inline]
fn place(raw: &[u8], at: &mut usize, part: &[u8]) -> bool {
    let start = *at;
    *at += part.len();
    raw.get(start..*at)
        .is_some_and(|found| found.as_ptr() == part.as_ptr() || found == part)
}

/// Whether `raw` holds CRLF at `at`; moves `at` past it.
#[inline]
fn line_end(raw: &[u8], at: &mut usize) -> bool {
    let start = *at;
    *at += 2;
    raw.get(start) == Some(&b'\r') && raw.get(start + 1) == Some(&b'\n')
}
