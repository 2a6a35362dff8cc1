//! Multipart bodies: `multipart:o1 o2 ...` cuts the body at byte offsets; part *i* is
//! `body[o_i .. o_(i+1)]`, the last part runs to the end of the body, and each part is a header
//! block, a blank line, and the part's body. Offsets spare the receiver from scanning the body
//! for boundaries; [`MultipartBuilder`] computes them so that nobody counts bytes by hand.

use bytes::{Bytes, BytesMut};

use crate::{
    Headers, Limits, Message, Text,
    error::{BuildError, MultipartError},
    parse::parse_head,
};

/// Name of the header that holds the offsets.
pub const MULTIPART: &str = "multipart";

/// One part of a multipart body; its headers and body are views into the message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's headers.
    pub headers: Headers,
    /// The part's body.
    pub body: Bytes,
}

impl Message {
    /// The parts of this message's body, or `None` when it has no `multipart` header.
    ///
    /// ```
    /// use lhttp_proto::Message;
    /// let msg = Message::parse(
    ///     "LHTTP/1.0 upload\r\nmultipart:0 14\r\n\r\nk1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2".into(),
    /// ).unwrap();
    /// let parts = msg.parts().unwrap().unwrap();
    /// assert_eq!(parts[1].headers.get("k2"), Some("v2"));
    /// assert_eq!(&parts[1].body[..], b"body2");
    /// ```
    pub fn parts(&self) -> Result<Option<Vec<Part>>, MultipartError> {
        self.parts_with(&Limits::default())
    }

    /// [`Message::parts`] with explicit limits on parts and headers per part.
    pub fn parts_with(&self, limits: &Limits) -> Result<Option<Vec<Part>>, MultipartError> {
        match self.header(MULTIPART) {
            None => Ok(None),
            Some(offsets) => parse_parts(offsets, &self.body, limits).map(Some),
        }
    }
}

/// Parses the offsets of a `multipart` header value against a body of `len` bytes.
pub fn parse_offsets(
    value: &str,
    len: usize,
    limits: &Limits,
) -> Result<Vec<usize>, MultipartError> {
    let mut offsets: Vec<usize> = Vec::new();
    for token in value.split_ascii_whitespace() {
        if offsets.len() == limits.max_parts {
            return Err(MultipartError::TooManyParts {
                max: limits.max_parts,
            });
        }
        // Digits only: `str::parse` would also take a leading `+`.
        let offset: usize = Some(token)
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| MultipartError::InvalidOffset(token.chars().take(32).collect()))?;
        if offset > len {
            return Err(MultipartError::OutOfRange { offset, len });
        }
        if offsets.last().is_some_and(|&last| offset <= last) {
            return Err(MultipartError::NotAscending);
        }
        offsets.push(offset);
    }
    if offsets.is_empty() {
        return Err(MultipartError::Empty);
    }
    Ok(offsets)
}

/// Cuts `body` into parts at the offsets in `value`.
pub fn parse_parts(
    value: &str,
    body: &Bytes,
    limits: &Limits,
) -> Result<Vec<Part>, MultipartError> {
    let offsets = parse_offsets(value, body.len(), limits)?;
    let mut parts = Vec::with_capacity(offsets.len());
    for (index, &start) in offsets.iter().enumerate() {
        let end = offsets.get(index + 1).copied().unwrap_or(body.len());
        let raw = body.slice(start..end);
        let (headers, body_start) = parse_head(&raw, 0, 1, limits.max_headers)
            .map_err(|source| MultipartError::InvalidPartHeaders { index, source })?;
        if !has_blank_line_before(&raw, body_start) {
            return Err(MultipartError::MissingHeaderBlock { index });
        }
        parts.push(Part {
            headers,
            body: raw.slice(body_start..),
        });
    }
    Ok(parts)
}

/// The head parser also stops at the end of input; a part is only well formed if its head was
/// ended by a blank line, i.e. the byte before the body is the LF of an empty line.
fn has_blank_line_before(raw: &[u8], body_start: usize) -> bool {
    let head = &raw[..body_start];
    head == b"\n" || head == b"\r\n" || head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n")
}

/// Builds a multipart body and its `multipart` header value.
///
/// ```
/// use lhttp_proto::{Message, MultipartBuilder};
/// let mut parts = MultipartBuilder::new();
/// parts.part([("k1", "v1")], "body1").unwrap();
/// parts.part([("k2", "v2")], "body2").unwrap();
/// let msg = parts.into_message(Message::builder("upload")).unwrap();
/// assert_eq!(msg.header("multipart"), Some("0 14"));
/// assert_eq!(msg.parts().unwrap().unwrap().len(), 2);
/// ```
#[derive(Debug, Default)]
pub struct MultipartBuilder {
    body: BytesMut,
    offsets: String,
}

impl MultipartBuilder {
    /// An empty body.
    pub fn new() -> Self {
        MultipartBuilder::default()
    }

    /// Appends a part with `headers` and `body`.
    pub fn part<N, V>(
        &mut self,
        headers: impl IntoIterator<Item = (N, V)>,
        body: impl AsRef<[u8]>,
    ) -> Result<&mut Self, BuildError>
    where
        N: Into<Text>,
        V: Into<Text>,
    {
        let mut checked = Headers::new();
        for (name, value) in headers {
            checked.append(name, value)?;
        }
        if !self.offsets.is_empty() {
            self.offsets.push(' ');
        }
        self.offsets.push_str(&self.body.len().to_string());
        for header in &checked {
            self.body.extend_from_slice(header.name().as_bytes());
            self.body.extend_from_slice(b":");
            self.body.extend_from_slice(header.value().as_bytes());
            self.body.extend_from_slice(b"\r\n");
        }
        self.body.extend_from_slice(b"\r\n");
        self.body.extend_from_slice(body.as_ref());
        Ok(self)
    }

    /// The `multipart` header value and the body.
    pub fn finish(self) -> (String, Bytes) {
        (self.offsets, self.body.freeze())
    }

    /// Sets the `multipart` header and the body of the message being built.
    pub fn into_message(self, builder: crate::MessageBuilder) -> Result<Message, BuildError> {
        let (offsets, body) = self.finish();
        builder.header(MULTIPART, offsets).body(body).build()
    }
}
