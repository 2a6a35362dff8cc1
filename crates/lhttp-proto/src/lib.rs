//! The lhttp wire format, without I/O.
//!
//! An lhttp message is HTTP-like text carried in one WebSocket message (or one [`stream`]
//! frame):
//!
//! ```text
//! LHTTP/1.0 <command>\r\n
//! <name>:<value>\r\n        (any number of headers)
//! \r\n
//! <body>
//! ```
//!
//! Layout:
//! - [`message`]: [`Message`] and its [`MessageBuilder`]; encoding into a caller's buffer.
//! - [`parse`]: turning received bytes into a [`Message`] without copying, under [`Limits`].
//! - [`headers`]: the ordered, case-insensitive [`Headers`].
//! - [`multipart`]: bodies cut into parts by byte offsets, and a [`MultipartBuilder`].
//! - [`names`], [`channel`], [`answer`]: the protocol's vocabulary (header names and
//!   commands), the channel-name rules and the `ok` / `error` answer shapes, shared by the
//!   server and the clients.
//! - [`stream`]: frames that carry messages on byte streams (TCP, TLS, Unix sockets), where
//!   no WebSocket frame says where a message ends.
//! - [`error`]: [`ParseError`] (peer's fault), [`BuildError`] (caller's fault),
//!   [`MultipartError`], [`FramingError`].
//!
//! The crate knows nothing of sockets or async runtimes; the server and the clients share it.

pub mod answer;
pub mod channel;
pub mod error;
pub mod headers;
pub mod message;
pub mod multipart;
pub mod names;
pub mod parse;
pub mod pattern;
pub mod stream;
mod text;
mod validate;

pub use error::{BuildError, FramingError, MultipartError, ParseError};
pub use headers::{Header, Headers};
pub use message::{Message, MessageBuilder, PREFIX};
pub use multipart::{MultipartBuilder, Part};
pub use parse::Limits;
pub use text::Text;
pub use validate::MAX_TOKEN_LEN;

/// True when `name` may be used as a command (1 to 256 bytes, no whitespace or control
/// characters).
pub fn is_valid_command(name: &str) -> bool {
    validate::is_command(name.as_bytes())
}
