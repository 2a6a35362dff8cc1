//! [`Channel`] names and the rules they follow.

use std::{borrow::Borrow, collections::HashSet, fmt, sync::Arc};

use crate::Rejection;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 256;

/// A validated channel name.
///
/// Names are matched exactly. They may not contain whitespace (the `subscribe` header separates
/// channels with spaces) or control characters, and may not contain `*` or `>`: those are
/// reserved for patterns, so that `subscribe:>` can never mean "everything" by accident (the
/// original passed it to NATS as a wildcard and leaked all traffic).
///
/// The name is copied out of the message that named it, so a subscription never keeps a whole
/// received frame alive.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

impl Channel {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Channel, Rejection> {
        check(name)?;
        Ok(Channel(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a channel name without allocating.
pub fn check(name: &str) -> Result<(), Rejection> {
    if name.is_empty() {
        return Err(Rejection::bad_request("empty channel name"));
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(Rejection::bad_request("channel name longer than 256 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    {
        return Err(Rejection::bad_request(
            "channel names may not contain whitespace, control characters, '*' or '>'",
        ));
    }
    Ok(())
}

/// Splits a `subscribe`, `unsubscribe` or `publish` header value into channel names, checking
/// each and dropping repeats (so `publish:a a` delivers once).
pub fn parse_list<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<&'a str>, Rejection> {
    let mut names: Vec<&str> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for value in values {
        for name in value.split_ascii_whitespace() {
            check(name)?;
            if seen.insert(name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

impl Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
