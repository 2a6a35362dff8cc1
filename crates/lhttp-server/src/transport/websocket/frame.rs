//! RFC 6455 frames without I/O: [`Decoder`] turns the bytes a client sent into whole messages
//! and control frames, [`Outgoing`] is what the server sends and how it is encoded.
//!
//! Only what a server needs: client frames must be masked, server frames are not; no extension
//! is ever negotiated, so the reserved bits must be clear.

use bytes::Bytes;

use crate::transport::{Broken, Outgoing, ReadError};

/// Frame opcodes (RFC 6455, section 5.2).
pub(crate) mod contract;

mod opcode {
    pub(super) const CONTINUATION: u8 = 0x0;
    pub(super) const TEXT: u8 = 0x1;
    pub(super) const BINARY: u8 = 0x2;
    pub(super) const CLOSE: u8 = 0x8;
    pub(super) const PING: u8 = 0x9;
    pub(super) const PONG: u8 = 0xA;
}

/// Largest payload of a control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest header of a frame the server sends: 2 bytes and a 64-bit length, no mask.
pub(crate) const MAX_SERVER_HEADER: usize = 10;

/// What a client's frames decoded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A whole text message, its UTF-8 checked, reassembled if it came in fragments.
    Text(Bytes),
    /// A whole binary message, reassembled if it came in fragments.
    Binary(Bytes),
    /// A ping; the server answers it with a pong carrying `payload`.
    Ping(Bytes),
    /// A pong: the client is alive.
    Pong,
    /// A close frame, with its status code if it had one.
    Close(Option<u16>),
    /// A frame of a message that is not complete yet (its payload is kept by the decoder).
    /// Nothing to hand on, but a frame all the same: the rate limit counts it, or a client could
    /// send empty fragments for ever at the cost of none.
    Fragment,
}

/// Why a client's bytes are not a WebSocket stream the server will go on reading: the
/// connection is closed with [`Violation::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    /// A message (or the fragments of one so far) over the size limit: 1009.
    #[error("message over the {0}-byte limit")]
    TooBig(usize),
    /// A text message or a close reason that is not UTF-8: 1007.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// Anything else RFC 6455 forbids: 1002.
    #[error("{0}")]
    Protocol(&'static str),
}

impl From<Violation> for Broken {
    fn from(violation: Violation) -> Broken {
        tracing::debug!(%violation, "WebSocket violation");
        let code = violation.close_code();
        let reason = match violation {
            Violation::TooBig(_) => "message too big",
            Violation::InvalidUtf8 => "invalid UTF-8 in a text frame",
            Violation::Protocol(_) => "WebSocket protocol violation",
        };
        Broken { code, reason }
    }
}

impl From<Violation> for ReadError {
    fn from(violation: Violation) -> ReadError {
        ReadError::Violation(violation.into())
    }
}

impl Violation {
    /// The close code the client is sent.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            Violation::TooBig(_) => 1009,
            Violation::InvalidUtf8 => 1007,
            Violation::Protocol(_) => 1002,
        }
    }
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    payload: Vec<u8>,
}

/// Reads client frames off the front of a byte buffer, one frame at a time, reassembling
/// fragmented messages.
#[derive(Debug)]
pub(crate) struct Decoder {
    max_message: usize,
    /// The data frames of a message whose last fragment has not arrived yet.
    fragments: Option<Fragments>,
}

/// A frame's header, once enough bytes for it are there.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload_len: usize,
}

impl Decoder {
    /// A decoder for messages of at most `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// The largest message it accepts.
    pub(crate) fn max_message(&self) -> usize {
        self.max_message
    }

    /// Bytes the frame at the front of `buf` takes, header and payload, once its header is
    /// there; 0 before that (or if the header is invalid: [`Decoder::decode`] says so).
    pub(crate) fn frame_len(&self, buf: &[u8]) -> usize {
        match self.header(buf) {
            Ok(Some(header)) => header.len + header.payload_len,
            _ => 0,
        }
    }

    /// True while a fragmented message has begun and not ended.
    pub(crate) fn in_fragments(&self) -> bool {
        self.fragments.is_some()
    }

    /// Drops the message being reassembled: nothing more will be read.
    pub(crate) fn forget_fragments(&mut self) {
        self.fragments = None;
    }

    /// Bytes allocated for the fragments of the message being reassembled.
    pub(crate) fn fragments_capacity(&self) -> usize {
        self.fragments.as_ref().map_or(0, |f| f.payload.capacity())
    }

    /// Decodes the frame at the front of `buf`: what it brings (a whole message, a control
    /// frame, or a fragment of a message still incomplete) and how many bytes of `buf` it used.
    /// With no item, `buf` holds no whole frame: decode again once more arrived.
    pub(crate) fn decode(&mut self, buf: &[u8]) -> Result<(Option<Incoming>, usize), Violation> {
        let Some(header) = self.header(buf)? else {
            return Ok((None, 0));
        };
        let end = header
            .len
            .checked_add(header.payload_len)
            .ok_or(Violation::TooBig(self.max_message))?;
        if buf.len() < end {
            return Ok((None, 0));
        }
        let item = self.frame(&header, &buf[header.len..end])?;
        Ok((Some(item), end))
    }

    /// The header at the front of `buf`, checked against everything it alone can break.
    #[inline]
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, Violation> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(Violation::Protocol(
                "reserved bits set without an extension",
            ));
        }
        if b1 & 0x80 == 0 {
            return Err(Violation::Protocol("client frames must be masked"));
        }
        let (payload_len, len_bytes) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 2),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 8),
                None => return Ok(None),
            },
            n => (u64::from(n), 0),
        };
        if payload_len >> 63 != 0 {
            return Err(Violation::Protocol(
                "64-bit length with the most significant bit set",
            ));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        match opcode {
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin {
                    return Err(Violation::Protocol("fragmented control frame"));
                }
                if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(Violation::Protocol("control frame over 125 bytes"));
                }
            }
            opcode::CONTINUATION if self.fragments.is_none() => {
                return Err(Violation::Protocol(
                    "continuation frame with nothing to continue",
                ));
            }
            opcode::TEXT | opcode::BINARY if self.fragments.is_some() => {
                return Err(Violation::Protocol(
                    "new message before the fragmented one ended",
                ));
            }
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {
                let so_far = self.fragments.as_ref().map_or(0, |f| f.payload.len()) as u64;
                if so_far.saturating_add(payload_len) > self.max_message as u64 {
                    return Err(Violation::TooBig(self.max_message));
                }
            }
            _ => return Err(Violation::Protocol("reserved opcode")),
        }
        let mask_at = 2 + len_bytes;
        let Some(mask) = buf.get(mask_at..mask_at + 4) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            len: mask_at + 4,
            // At most `max_message` or 125 (checked above), so it fits.
            payload_len: usize::try_from(payload_len)
                .map_err(|_| Violation::TooBig(self.max_message))?,
        }))
    }

    /// Handles one whole frame whose header passed [`Decoder::header`].
    fn frame(&mut self, header: &Header, masked: &[u8]) -> Result<Incoming, Violation> {
        match header.opcode {
            opcode::PING => Ok(Incoming::Ping(Bytes::from(unmasked(masked, header)))),
            opcode::PONG => Ok(Incoming::Pong),
            opcode::CLOSE => close(&unmasked(masked, header)).map(Incoming::Close),
            opcode::CONTINUATION => {
                let mut fragments = self.fragments.take().ok_or(Violation::Protocol(
                    "continuation frame with nothing to continue",
                ))?;
                let start = fragments.payload.len();
                // Doubling, but never past the largest message: a message of 64 KiB in
                // fragments holds at most 64 KiB, not the 128 KiB plain doubling could reach.
                let needed = start + masked.len();
                if needed > fragments.payload.capacity() {
                    let target = (fragments.payload.capacity() * 2)
                        .clamp(needed, self.max_message.max(needed));
                    fragments.payload.reserve_exact(target - start);
                }
                fragments.payload.extend_from_slice(masked);
                unmask(&mut fragments.payload[start..], header.mask);
                if !header.fin {
                    self.fragments = Some(fragments);
                    return Ok(Incoming::Fragment);
                }
                message(fragments.text, fragments.payload)
            }
            text_or_binary => {
                let text = text_or_binary == opcode::TEXT;
                let payload = unmasked(masked, header);
                if header.fin {
                    return message(text, payload);
                }
                self.fragments = Some(Fragments { text, payload });
                Ok(Incoming::Fragment)
            }
        }
    }
}

/// A whole message's payload, checked to be UTF-8 if it is text.
fn message(text: bool, payload: Vec<u8>) -> Result<Incoming, Violation> {
    if text && std::str::from_utf8(&payload).is_err() {
        return Err(Violation::InvalidUtf8);
    }
    // Parsing takes views of the payload at once. Owned from the start, it has its reference
    // count from the start; from a plain `Vec`, the first view would have to promote it (an
    // allocation and a compare-and-swap in the middle of parsing).
    let payload = if payload.is_empty() {
        Bytes::new()
    } else {
        Bytes::from_owner(payload)
    };
    Ok(if text {
        Incoming::Text(payload)
    } else {
        Incoming::Binary(payload)
    })
}

/// A close frame's status code, checked with its reason (section 7.4).
fn close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(Violation::Protocol("close frame with a 1-byte payload")),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    // 1004-1006 and 1015 are reserved for reporting, never sent; below 1000 and 1016-2999 are
    // unassigned; 5000 and over are not valid codes.
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(Violation::Protocol("invalid close code"));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(Violation::InvalidUtf8);
    }
    Ok(Some(code))
}

/// A copy of `masked` with the mask removed.
fn unmasked(masked: &[u8], header: &Header) -> Vec<u8> {
    let mut payload = masked.to_vec();
    unmask(&mut payload, header.mask);
    payload
}

/// XORs `payload`, which starts at the first byte of a frame's payload, with `mask`: eight
/// bytes at a time, then the tail.
pub(crate) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let value = u64::from_ne_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]) ^ wide;
        word.copy_from_slice(&value.to_ne_bytes());
    }
    // The tail starts at a multiple of eight, so the mask starts over at its first byte.
    for (byte, key) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Appends `frame` as a WebSocket frame, header then payload, to `out`.
pub(crate) fn encode_outgoing(frame: &Outgoing, out: &mut Vec<u8>) {
    match frame {
        Outgoing::Text(bytes) => encode(out, opcode::TEXT, &[bytes]),
        Outgoing::Binary(bytes) => encode(out, opcode::BINARY, &[bytes]),
        Outgoing::Ping => encode(out, opcode::PING, &[]),
        Outgoing::Pong(bytes) => encode(out, opcode::PONG, &[bytes]),
        Outgoing::Close(code, reason) => {
            // A reason is a static string the server chose: within a control frame's 125
            // bytes (checked by a test over every reason the server uses).
            encode(
                out,
                opcode::CLOSE,
                &[&code.to_be_bytes(), reason.as_bytes()],
            );
        }
    }
}

/// Appends one final, unmasked frame whose payload is `parts` one after another.
fn encode(out: &mut Vec<u8>, opcode: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    out.reserve(MAX_SERVER_HEADER + len);
    out.push(0x80 | opcode);
    if len <= 125 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    for part in parts {
        out.extend_from_slice(part);
    }
}

#[cfg(test)]
mod tests;
