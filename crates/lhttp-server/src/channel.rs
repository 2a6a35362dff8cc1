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

/// The names in `subscribe`, `unsubscribe` or `publish` header values, unchecked.
pub(crate) fn names<'a>(values: impl Iterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    values.flat_map(str::split_ascii_whitespace)
}

/// Checks every name in the header values, without collecting them.
pub fn check_list<'a>(values: impl Iterator<Item = &'a str>) -> Result<(), Rejection> {
    names(values).try_for_each(check)
}

/// Lists of at most this many names are de-duplicated by scanning: no hash set to allocate
/// for the one or two channels a message usually names.
const SCAN_DEDUP_MAX: usize = 16;

/// Splits `subscribe`, `unsubscribe` or `publish` header values into channel names, checking
/// each and dropping repeats (so `publish:a a` delivers once).
pub fn parse_list<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<&'a str>, Rejection> {
    let mut list: Vec<&str> = Vec::new();
    let mut seen: Option<HashSet<&str>> = None;
    for name in names(values) {
        check(name)?;
        let new = match &mut seen {
            Some(seen) => seen.insert(name),
            None if list.len() < SCAN_DEDUP_MAX => !list.contains(&name),
            None => {
                let mut set: HashSet<&str> = list.iter().copied().collect();
                let new = set.insert(name);
                seen = Some(set);
                new
            }
        };
        if new {
            list.push(name);
        }
    }
    Ok(list)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_drop_repeats_short_and_long() {
        let short = parse_list(["a b a", "c b"].into_iter()).unwrap();
        assert_eq!(short, ["a", "b", "c"]);
        let names: Vec<String> = (0..40).map(|i| format!("ch{}", i % 25)).collect();
        let joined = names.join(" ");
        let long = parse_list(std::iter::once(joined.as_str())).unwrap();
        let expected: Vec<String> = (0..25).map(|i| format!("ch{i}")).collect();
        assert_eq!(long, expected);
        assert!(parse_list(std::iter::once("ok >")).is_err());
        assert!(check_list(std::iter::once("ok a*b")).is_err());
        assert!(check_list(std::iter::once("ok fine")).is_ok());
    }
}
