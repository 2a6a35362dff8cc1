//! [`Text`]: an immutable, cheaply clonable UTF-8 string backed by [`Bytes`].

use std::{borrow::Borrow, fmt, hash, ops::Deref};

use bytes::Bytes;

/// An immutable UTF-8 string that shares its storage with the message it was parsed from.
///
/// Parsing slices the received frame instead of copying it, so a header name or value is a
/// reference-counted view into that frame. Cloning is a reference-count increment.
#[derive(Clone, Default)]
pub struct Text(Bytes);

impl Text {
    /// A `Text` from a string literal, without allocating.
    pub const fn from_static(s: &'static str) -> Self {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps bytes that are valid UTF-8, or gives them back.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, Bytes> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Text(bytes)),
            Err(_) => Err(bytes),
        }
    }

    /// Slices `bytes[range]` as text. Callers guarantee that `bytes[range]` is valid UTF-8
    /// (the parser validates the whole head once and cuts only at ASCII boundaries).
    pub(crate) fn slice_checked(bytes: &Bytes, start: usize, end: usize) -> Self {
        let slice = bytes.slice(start..end);
        debug_assert!(std::str::from_utf8(&slice).is_ok());
        Text(slice)
    }

    /// The protocol's own header names (docs/protocol.md), as static text, when `name` is
    /// spelled exactly so: parsing then takes no reference count on the frame for the name.
    pub(crate) fn well_known(name: &[u8]) -> Option<Self> {
        // A match on byte strings compares lengths first: most names are rejected at once.
        let known = match name {
            b"publish" => "publish",
            b"subscribe" => "subscribe",
            b"unsubscribe" => "unsubscribe",
            b"request-id" => "request-id",
            b"upstream" => "upstream",
            b"multipart" => "multipart",
            b"status" => "status",
            b"reason" => "reason",
            _ => return None,
        };
        Some(Text::from_static(known))
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks (or, for `slice_checked`, is handed) valid UTF-8,
        // and the bytes are immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Converts into the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::from_static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Bytes::from(s))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Self {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl hash::Hash for Text {
    fn hash<H: hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
