//! lhttp messages on a byte stream (TCP, TLS, Unix sockets, an in-process pipe), where no
//! WebSocket frame says where a message ends.
//!
//! Each message goes in a *frame*: its length in bytes as decimal digits on a line of its own,
//! then the message, then a line end that is not counted:
//!
//! ```text
//! 34\r\n
//! LHTTP/1.0 chat\r\n
//! subscribe:room\r\n
//! \r\n
//! \r\n
//! ```
//!
//! - The length line is 1 to [`MAX_LENGTH_DIGITS`] ASCII digits ended by `\r\n` or `\n`; the
//!   reader knows the whole frame's size before it holds a byte of the message, and refuses
//!   one over its limit then.
//! - Line ends (`\r`, `\n`) before a length line are skipped, so the line end after a message
//!   may be left out, and a person typing frames by hand may press Enter once too often.
//! - A frame of length 0 carries no message: a *heartbeat*. The server sends one when a
//!   connection has been quiet for a while and expects some traffic back (any frame; a client
//!   with nothing to say sends a heartbeat); clients never need to answer one at once.
//! - The server ends a connection with a last message, command [`CLOSE_COMMAND`], headers
//!   `code` (the WebSocket close code the same event has on WebSocket) and `reason`, and then
//!   closes the stream.
//!
//! The module is sans-IO: [`decode`] looks at the bytes a reader holds, [`encode`] appends a
//! frame to a writer's buffer.

use crate::error::FramingError;

/// Most digits of a length line: lengths up to 9,999,999,999 bytes, more than any limit.
pub const MAX_LENGTH_DIGITS: usize = 10;

/// The command of the last message the server sends before it closes a stream.
pub const CLOSE_COMMAND: &str = "close";

/// A heartbeat frame as the server writes it.
pub const HEARTBEAT: &[u8] = b"0\r\n\r\n";

/// Longest frame header [`encode`] writes: the digits and the line end, and the line end after
/// the message.
pub const MAX_FRAME_OVERHEAD: usize = MAX_LENGTH_DIGITS + 4;

/// What [`decode`] found at the front of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole message.
    Message(&'a [u8]),
    /// A heartbeat: a frame of length 0.
    Heartbeat,
    /// Not a whole frame yet. `frame_len` is the size of the whole frame from the first byte
    /// of the bytes given (skipped line ends and length line included), once its length line
    /// has arrived.
    Incomplete {
        /// Bytes the whole frame takes, when known.
        frame_len: Option<usize>,
    },
}

/// Decodes the frame at the front of `buf`, a message of at most `max_message` bytes. Returns
/// what was found and how many bytes of `buf` it used: for [`Decoded::Incomplete`], the line
/// ends skipped before the frame, which the caller may drop.
///
/// Fails when the bytes cannot be a frame (a length line with something other than digits,
/// or too many of them) and when the length is over `max_message`: the stream cannot be read
/// further either way.
pub fn decode(buf: &[u8], max_message: usize) -> Result<(Decoded<'_>, usize), FramingError> {
    let skipped = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[skipped..];
    let incomplete = |frame_len| Ok((Decoded::Incomplete { frame_len }, skipped));
    // The length line: digits, then `\n` or `\r\n`.
    let digits = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    if digits > MAX_LENGTH_DIGITS {
        return Err(FramingError::BadLength);
    }
    let after_digits = &rest[digits..];
    let line_end = match after_digits {
        [] => return incomplete(None),
        [b'\n', ..] => 1,
        [b'\r'] => return incomplete(None),
        [b'\r', b'\n', ..] => 2,
        _ => return Err(FramingError::BadLength),
    };
    if digits == 0 {
        return Err(FramingError::BadLength);
    }
    // At most ten digits: fits in a u64 without overflow.
    let len = rest[..digits]
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    if len > max_message as u64 {
        return Err(FramingError::TooLarge {
            len,
            max: max_message,
        });
    }
    let len = len as usize;
    let start = skipped + digits + line_end;
    if len == 0 {
        return Ok((Decoded::Heartbeat, start));
    }
    let end = start + len;
    if buf.len() < end {
        return incomplete(Some(end));
    }
    Ok((Decoded::Message(&buf[start..end]), end))
}

/// Appends `message` to `out` as one frame (an empty `message` makes a heartbeat).
pub fn encode(message: &[u8], out: &mut Vec<u8>) {
    let mut digits = [0; 20];
    out.extend_from_slice(format_len(message.len(), &mut digits));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(message);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `buf`.
fn format_len(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_all(mut buf: &[u8], max: usize) -> Result<Vec<Option<Vec<u8>>>, FramingError> {
        let mut out = Vec::new();
        loop {
            let (decoded, used) = decode(buf, max)?;
            match decoded {
                Decoded::Message(m) => out.push(Some(m.to_vec())),
                Decoded::Heartbeat => out.push(None),
                Decoded::Incomplete { .. } => return Ok(out),
            }
            buf = &buf[used..];
        }
    }

    #[test]
    fn a_frame_typed_by_hand_decodes() {
        let typed = b"\n34\nLHTTP/1.0 chat\r\nsubscribe:room\r\n\r\n\n\n0\n";
        assert_eq!(
            decode_all(typed, 100).unwrap(),
            vec![
                Some(b"LHTTP/1.0 chat\r\nsubscribe:room\r\n\r\n".to_vec()),
                None
            ]
        );
    }

    #[test]
    fn the_size_is_checked_from_the_length_line_alone() {
        assert_eq!(
            decode(b"65537\r\n", 65536),
            Err(FramingError::TooLarge {
                len: 65537,
                max: 65536
            })
        );
        assert_eq!(
            decode(b"99999999999\r\n", usize::MAX),
            Err(FramingError::BadLength)
        );
        assert_eq!(
            decode(b"10\r\nLHTTP", 100),
            Ok((
                Decoded::Incomplete {
                    frame_len: Some(14)
                },
                0
            ))
        );
        assert_eq!(
            decode(b"\r\n\r\n1", 100),
            Ok((Decoded::Incomplete { frame_len: None }, 4))
        );
    }

    #[test]
    fn anything_but_digits_on_a_length_line_is_refused() {
        for bad in [
            &b"LHTTP/1.0 chat\r\n"[..],
            b"12 \r\n",
            b"-1\r\n",
            b"1x",
            b"\r\nabc",
        ] {
            assert_eq!(decode(bad, 100), Err(FramingError::BadLength), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip_read_in_any_chunks(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for m in &messages {
                encode(m, &mut wire);
            }
            let expected: Vec<Option<Vec<u8>>> = messages
                .iter()
                .map(|m| (!m.is_empty()).then(|| m.clone()))
                .collect();
            // Read as a socket gives it: chunk by chunk, undecoded bytes kept in front.
            let mut held = Vec::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                held.extend_from_slice(piece);
                loop {
                    let (decoded, used) = decode(&held, 300).unwrap();
                    let done = matches!(decoded, Decoded::Incomplete { .. });
                    match decoded {
                        Decoded::Message(m) => got.push(Some(m.to_vec())),
                        Decoded::Heartbeat => got.push(None),
                        Decoded::Incomplete { frame_len } => {
                            if let Some(len) = frame_len {
                                prop_assert!(len > held.len());
                            }
                        }
                    }
                    held.drain(..used);
                    if done {
                        break;
                    }
                }
            }
            prop_assert_eq!(got, expected);
            prop_assert!(held.iter().all(|&b| b == b'\r' || b == b'\n'));
        }
    }
}
