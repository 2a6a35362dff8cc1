//! Errors of the protocol crate: one enum for parsing received bytes, one for building messages
//! in code, one for multipart bodies.

use thiserror::Error;

/// Why received bytes are not an lhttp message.
///
/// Every variant is the peer's fault; [`ParseError::status`] gives the HTTP-style status the
/// server answers with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The message is larger than [`crate::Limits::max_size`].
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The message does not start with `LHTTP/`.
    #[error("message does not start with \"LHTTP/1.0 \"")]
    MissingPrefix,
    /// The message starts with `LHTTP/` but names a version other than 1.0.
    #[error("unsupported protocol version (only LHTTP/1.0 is spoken)")]
    UnsupportedVersion,
    /// `LHTTP/1.0` is followed by something other than exactly one space and a command.
    #[error("expected exactly one space after LHTTP/1.0")]
    MalformedStartLine,
    /// The start line has no command.
    #[error("missing command")]
    EmptyCommand,
    /// The command contains whitespace or control characters, or is too long.
    #[error("invalid command")]
    InvalidCommand,
    /// The start line or the headers are not valid UTF-8.
    #[error("start line or headers are not valid UTF-8")]
    InvalidUtf8,
    /// A header line (1-based, counting the start line as line 1) has no colon.
    #[error("header line {line} has no colon")]
    HeaderWithoutColon {
        /// Line number, the start line being line 1.
        line: usize,
    },
    /// A header name is empty, too long, or contains whitespace or control characters.
    #[error("invalid header name on line {line}")]
    InvalidHeaderName {
        /// Line number, the start line being line 1.
        line: usize,
    },
    /// A header value contains control characters.
    #[error("invalid header value on line {line}")]
    InvalidHeaderValue {
        /// Line number, the start line being line 1.
        line: usize,
    },
    /// More headers than [`crate::Limits::max_headers`].
    #[error("more than {max} headers")]
    TooManyHeaders {
        /// The configured limit.
        max: usize,
    },
}

impl ParseError {
    /// The HTTP-style status code this error is answered with: 413 for size, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::TooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// Why a message, header or part built in code is not valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The command is empty, too long, or contains whitespace or control characters.
    #[error("invalid command {0:?}")]
    InvalidCommand(String),
    /// The header name is empty, too long, or contains `:`, whitespace or control characters.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// The header value contains control characters (CR and LF among them).
    #[error("invalid value for header {0:?}")]
    InvalidHeaderValue(String),
}

/// Why a `multipart` header does not describe the body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MultipartError {
    /// An offset is not a decimal number.
    #[error("multipart offset {0:?} is not a number")]
    InvalidOffset(String),
    /// An offset points past the end of the body.
    #[error("multipart offset {offset} is beyond the body of {len} bytes")]
    OutOfRange {
        /// The offending offset.
        offset: usize,
        /// Length of the body.
        len: usize,
    },
    /// Offsets are not strictly ascending.
    #[error("multipart offsets must be strictly ascending")]
    NotAscending,
    /// The header lists no offsets.
    #[error("multipart header lists no offsets")]
    Empty,
    /// More parts than [`crate::Limits::max_parts`].
    #[error("more than {max} parts")]
    TooManyParts {
        /// The configured limit.
        max: usize,
    },
    /// A part has no blank line separating its headers from its body.
    #[error("part {index} has no header block")]
    MissingHeaderBlock {
        /// Zero-based index of the part.
        index: usize,
    },
    /// A part's header block is malformed.
    #[error("part {index}: {source}")]
    InvalidPartHeaders {
        /// Zero-based index of the part.
        index: usize,
        /// What is wrong with its headers.
        source: ParseError,
    },
}

/// Why the bytes of a stream cannot be read as frames (see [`crate::stream`]). The stream
/// cannot be read further after either.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FramingError {
    /// A length line holds something other than 1 to 10 digits and a line end.
    #[error("a frame must start with its length in decimal digits on a line of its own")]
    BadLength,
    /// The length is over the reader's message size limit.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The length announced.
        len: u64,
        /// The limit.
        max: usize,
    },
}
