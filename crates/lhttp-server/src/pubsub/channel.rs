//! [`Channel`] names and the rules they follow.

use std::{borrow::Borrow, collections::HashSet, fmt, sync::Arc};

use crate::Rejection;

pub use lhttp_proto::channel::MAX_CHANNEL_LEN;

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

/// Checks a channel name without allocating (the rules of [`lhttp_proto::channel`]).
pub fn check(name: &str) -> Result<(), Rejection> {
    lhttp_proto::channel::check(name).map_err(|e| Rejection::bad_request(e.to_string()))
}

/// The names in `subscribe`, `unsubscribe` or `publish` header values, unchecked.
pub(crate) fn names<'a>(values: impl Iterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    values.flat_map(|value| Words { rest: value })
}

/// The words of one header value, split on ASCII whitespace. A plain byte loop: this runs for
/// every published message, and `str::split_ascii_whitespace`'s generic splitter costs several
/// times more for the usual one-word value.
struct Words<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.rest.as_bytes();
        let Some(start) = bytes.iter().position(|b| !b.is_ascii_whitespace()) else {
            self.rest = "";
            return None;
        };
        let end = bytes[start..]
            .iter()
            .position(u8::is_ascii_whitespace)
            .map_or(bytes.len(), |len| start + len);
        // Both ends are at ASCII bytes (or the end), so both are character boundaries.
        let word = &self.rest[start..end];
        self.rest = &self.rest[end..];
        Some(word)
    }
}

/// What the `publish` headers of a message name, found in one pass over its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishList<'a> {
    /// No `publish` header.
    Absent,
    /// One `publish` header naming one channel (not yet checked): the usual case, which
    /// needs no list. `at` is the header's position among the message's headers.
    One { name: &'a str, at: usize },
    /// Anything else: read the headers with [`names`] or [`parse_list`].
    Other,
}

impl<'a> PublishList<'a> {
    /// Looks at `headers` once.
    pub(crate) fn of(headers: &'a lhttp_proto::Headers) -> Self {
        let mut list = PublishList::Absent;
        for (at, header) in headers.iter().enumerate() {
            let name = header.name();
            if name.len() != PUBLISH.len() || !name.eq_ignore_ascii_case(PUBLISH) {
                continue;
            }
            // Values are trimmed: any whitespace left separates names.
            let value = header.value();
            list = match list {
                PublishList::Absent
                    if !value.is_empty() && !value.bytes().any(|b| b.is_ascii_whitespace()) =>
                {
                    PublishList::One { name: value, at }
                }
                _ => return PublishList::Other,
            };
        }
        list
    }
}

const PUBLISH: &str = lhttp_proto::names::PUBLISH;

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
    parse_list_with(values, check)
}

/// [`parse_list`] for `subscribe` and `unsubscribe`, whose names may also be wildcard
/// patterns (`sensor.*.temp`, `chat.>`; see [`is_pattern`]).
pub(crate) fn parse_subscription_list<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Vec<&'a str>, Rejection> {
    parse_list_with(values, |name| {
        if !is_pattern(name) {
            return check(name);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(Rejection::bad_request("pattern longer than 256 bytes"));
        }
        // Nothing a client sends may follow every channel: a pattern starts with a channel
        // token (`chat.>`, not `>` or `*.lobby`).
        if is_pattern(name.split('.').next().unwrap_or_default()) {
            return Err(Rejection::bad_request(format!(
                "pattern {name}: the first token must be a channel name, not a wildcard"
            )));
        }
        lhttp_proto::pattern::Pattern::parse(name)
            .map(drop)
            .map_err(|e| Rejection::bad_request(format!("pattern {name}: {e}")))
    })
}

/// True when `name` is a wildcard pattern rather than a channel (it holds `*` or `>`, which
/// no channel name may).
pub(crate) fn is_pattern(name: &str) -> bool {
    name.contains(['*', '>'])
}

fn parse_list_with<'a>(
    values: impl Iterator<Item = &'a str>,
    check: impl Fn(&str) -> Result<(), Rejection>,
) -> Result<Vec<&'a str>, Rejection> {
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

    #[test]
    fn publish_lists_are_told_apart_in_one_pass() {
        let list = |head: &str| {
            let text = format!("LHTTP/1.0 x\r\n{head}\r\n");
            let message = lhttp_proto::Message::parse(text.into()).unwrap();
            match PublishList::of(message.headers()) {
                PublishList::Absent => "absent".to_owned(),
                PublishList::One { name, at } => format!("one {name} at {at}"),
                PublishList::Other => "other".to_owned(),
            }
        };
        assert_eq!(list("k:v"), "absent");
        assert_eq!(list("k:v\r\nPublish: room "), "one room at 1");
        assert_eq!(list("publish:a b"), "other");
        assert_eq!(list("publish:a\tb"), "other");
        assert_eq!(list("publish:a\r\npublish:b"), "other");
        assert_eq!(list("publish:"), "other");
    }

    #[test]
    fn words_split_on_any_ascii_whitespace() {
        let words: Vec<&str> = names([" a\tb  c ", "", "  ", "d", "é f"].into_iter()).collect();
        assert_eq!(words, ["a", "b", "c", "d", "é", "f"]);
    }
}
