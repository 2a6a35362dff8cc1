//! Parsing one received WebSocket message into a [`Message`].
//!
//! Grammar (docs/protocol.md has the long form):
//!
//! ```text
//! message    = "LHTTP/1.0" SP command [EOL *(header EOL) [header / EOL body]]
//! header     = name ":" value          ; value trimmed of spaces and tabs
//! EOL        = CRLF / LF
//! ```
//!
//! The head (start line and headers) must be UTF-8; the body is any bytes and is never scanned.

use bytes::Bytes;

use crate::{Headers, Message, Text, error::ParseError, message::PREFIX, validate};

/// What a peer may make the parser accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in bytes (default 64 KiB).
    pub max_size: usize,
    /// Most headers per message, and per multipart part (default 64).
    pub max_headers: usize,
    /// Most parts in a multipart body (default 64).
    pub max_parts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: 64 * 1024,
            max_headers: 64,
            max_parts: 64,
        }
    }
}

impl Message {
    /// Parses `bytes` with the default [`Limits`].
    ///
    /// ```
    /// use lhttp_proto::Message;
    /// let msg = Message::parse("LHTTP/1.0 chat\r\nPublish: room 1 \r\n\r\nhi\r\n\r\nthere".into()).unwrap();
    /// assert_eq!(msg.command(), "chat");
    /// assert_eq!(msg.header("publish"), Some("room 1"));
    /// assert_eq!(&msg.body()[..], b"hi\r\n\r\nthere");
    /// ```
    pub fn parse(bytes: Bytes) -> Result<Message, ParseError> {
        Message::parse_with(bytes, &Limits::default())
    }

    /// Parses `bytes`, enforcing `limits`. The body and every header are views into `bytes`.
    pub fn parse_with(bytes: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        if bytes.len() > limits.max_size {
            return Err(ParseError::TooLarge {
                size: bytes.len(),
                max: limits.max_size,
            });
        }
        let rest = check_prefix(&bytes)?;
        let (command_end, mut pos) = line_end(&bytes, rest);
        let command = &bytes[rest..command_end];
        if command.is_empty() {
            return Err(ParseError::EmptyCommand);
        }
        let (headers, body_start) = parse_head(&bytes, pos, 2, limits.max_headers)?;
        // Validate the start line only after the head was found valid UTF-8 as a whole.
        if validate::is_printable_ascii(command) {
            // ASCII is UTF-8; the one command rule left is "no space".
            if command.len() > validate::MAX_TOKEN_LEN || validate::has_space(command) {
                return Err(ParseError::InvalidCommand);
            }
        } else {
            if std::str::from_utf8(command).is_err() {
                return Err(ParseError::InvalidUtf8);
            }
            if !validate::is_command(command) {
                return Err(ParseError::InvalidCommand);
            }
        }
        pos = body_start;
        Ok(Message {
            command: Text::slice_checked(&bytes, rest, command_end),
            headers,
            body: bytes.slice(pos..),
            raw: Some(bytes),
        })
    }
}

/// Checks `LHTTP/1.0 ` and returns where the command starts.
fn check_prefix(bytes: &[u8]) -> Result<usize, ParseError> {
    if bytes.starts_with(PREFIX) {
        if bytes.get(PREFIX.len()) == Some(&b' ') {
            return Err(ParseError::MalformedStartLine);
        }
        return Ok(PREFIX.len());
    }
    let version = &PREFIX[..PREFIX.len() - 1];
    if bytes.starts_with(version) {
        // `LHTTP/1.0` followed by something other than one space: `LHTTP/1.0Xchat`, or a
        // start line with no command at all.
        return match bytes.get(version.len()) {
            None | Some(b'\r') | Some(b'\n') => Err(ParseError::EmptyCommand),
            Some(_) => Err(ParseError::MalformedStartLine),
        };
    }
    if bytes.starts_with(b"LHTTP/") {
        return Err(ParseError::UnsupportedVersion);
    }
    Err(ParseError::MissingPrefix)
}

/// Finds the end of the line starting at `start`: returns (end of content, start of next
/// line). A line ends at LF, optionally preceded by CR, or at the end of the input.
fn line_end(bytes: &[u8], start: usize) -> (usize, usize) {
    match memchr::memchr(b'\n', &bytes[start..]) {
        Some(i) => {
            let lf = start + i;
            let end = if lf > start && bytes[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            (end, lf + 1)
        }
        None => (bytes.len(), bytes.len()),
    }
}

/// What one pass over a header line finds.
struct LineScan {
    /// Position of the first colon.
    colon: Option<usize>,
    /// Every byte is ASCII, so the line is valid UTF-8 without further checking.
    ascii: bool,
    /// A control character (other than tab) comes after the first colon: the value is invalid.
    control_after_colon: bool,
}

/// Looks at every byte of a header line once, instead of one pass per rule.
fn scan_line(line: &[u8]) -> LineScan {
    let mut scan = LineScan {
        colon: None,
        ascii: true,
        control_after_colon: false,
    };
    for (i, &b) in line.iter().enumerate() {
        if b >= 0x80 {
            scan.ascii = false;
        } else if b == b':' && scan.colon.is_none() {
            scan.colon = Some(i);
        } else if scan.colon.is_some() && ((b < b' ' && b != b'\t') || b == 0x7f) {
            scan.control_after_colon = true;
        }
    }
    scan
}

/// Splits a header line known to be printable ASCII into trimmed name and value: the rules that
/// remain are a colon, and a name of 1..=256 bytes without spaces.
fn split_printable(line: &[u8], line_no: usize) -> Result<(&[u8], &[u8]), ParseError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ParseError::HeaderWithoutColon { line: line_no })?;
    let name = validate::trim(&line[..colon]);
    if name.is_empty() || name.len() > validate::MAX_TOKEN_LEN || validate::has_space(name) {
        return Err(ParseError::InvalidHeaderName { line: line_no });
    }
    Ok((name, validate::trim(&line[colon + 1..])))
}

/// Splits any header line into trimmed name and value, checking every rule (UTF-8, colon, name,
/// control characters in the value) in the order the errors are reported.
fn split_any(line: &[u8], line_no: usize) -> Result<(&[u8], &[u8]), ParseError> {
    let scan = scan_line(line);
    if !scan.ascii && std::str::from_utf8(line).is_err() {
        return Err(ParseError::InvalidUtf8);
    }
    let colon = scan
        .colon
        .ok_or(ParseError::HeaderWithoutColon { line: line_no })?;
    let name = validate::trim(&line[..colon]);
    if !validate::is_header_name(name) {
        return Err(ParseError::InvalidHeaderName { line: line_no });
    }
    if scan.control_after_colon {
        return Err(ParseError::InvalidHeaderValue { line: line_no });
    }
    Ok((name, validate::trim(&line[colon + 1..])))
}

/// Parses header lines from `pos` until a blank line or the end of input. Returns the headers
/// and where the body starts. `first_line` numbers lines in errors.
pub(crate) fn parse_head(
    bytes: &Bytes,
    mut pos: usize,
    first_line: usize,
    max_headers: usize,
) -> Result<(Headers, usize), ParseError> {
    let mut headers = Headers::with_capacity(8);
    let mut line_no = first_line;
    while pos < bytes.len() {
        let (end, next) = line_end(bytes, pos);
        if end == pos {
            // Blank line: the body follows.
            return Ok((headers, next));
        }
        if headers.len() == max_headers {
            return Err(ParseError::TooManyHeaders { max: max_headers });
        }
        let line = &bytes[pos..end];
        let (name, value) = if validate::is_printable_ascii(line) {
            split_printable(line, line_no)?
        } else {
            split_any(line, line_no)?
        };
        let offset = |s: &[u8]| s.as_ptr() as usize - bytes.as_ptr() as usize;
        let (name_at, value_at) = (offset(name), offset(value));
        // A name spelled as the protocol spells it is shared static text: no reference count
        // to take now and give back when the message is dropped.
        let name = Text::well_known(name)
            .unwrap_or_else(|| Text::slice_checked(bytes, name_at, name_at + name.len()));
        headers.push_unchecked(
            name,
            Text::slice_checked(bytes, value_at, value_at + value.len()),
        );
        pos = next;
        line_no += 1;
    }
    Ok((headers, bytes.len()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn well_known_names_keep_the_senders_spelling_and_match_any_case() {
        let message = Message::parse(Bytes::from_static(
            b"LHTTP/1.0 chat\r\npublish:a\r\nPublish:b\r\nrequest-id: 7 \r\n\r\nhi",
        ))
        .unwrap();
        let names: Vec<&str> = message.headers().iter().map(|h| h.name()).collect();
        assert_eq!(names, ["publish", "Publish", "request-id"]);
        assert_eq!(
            message.headers().get_all("PUBLISH").collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(message.header("Request-Id"), Some("7"));
    }

    proptest! {
        /// The fast path for printable lines decides exactly as the full check does.
        #[test]
        fn fast_and_full_header_checks_agree(line in "[ -~]{0,300}") {
            prop_assert_eq!(
                split_printable(line.as_bytes(), 3),
                split_any(line.as_bytes(), 3)
            );
        }

        /// Lines with colons and spaces in every place, where the rules are decided.
        #[test]
        fn fast_and_full_checks_agree_around_colons(line in "[ :a]{0,12}") {
            prop_assert_eq!(
                split_printable(line.as_bytes(), 3),
                split_any(line.as_bytes(), 3)
            );
        }
    }
}
