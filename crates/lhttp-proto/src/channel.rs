//! The rules channel names follow, shared by the server (which refuses other names with 400)
//! and the clients (which can check before sending); the channels the server reserves for
//! inboxes; and the rules of queue-group names.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 256;

/// Why a name cannot be a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The name is empty.
    #[error("empty channel name")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`].
    #[error("channel name longer than 256 bytes")]
    TooLong,
    /// Whitespace separates channels in headers, control characters break lines, and `*` and
    /// `>` are reserved for patterns (so that `subscribe:>` can never mean "everything").
    #[error("channel names may not contain whitespace, control characters, '*' or '>'")]
    ReservedCharacter,
}

/// Checks that `name` may be a channel, without allocating.
pub fn check(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    // Printable ASCII other than the pattern characters is the usual case; only other names
    // need the Unicode rules.
    let plain = |b: &u8| b.is_ascii_graphic() && *b != b'*' && *b != b'>';
    if !name.as_bytes().iter().all(plain)
        && name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    {
        return Err(ChannelError::ReservedCharacter);
    }
    Ok(())
}

/// The prefix of inbox and reply addresses (`_inbox.<node>.<token>`): channels the server
/// gives out, to which no client may subscribe by name.
pub const INBOX_PREFIX: &str = "_inbox.";

/// True when `channel` is an inbox or a reply address.
pub fn is_inbox(channel: &str) -> bool {
    channel.starts_with(INBOX_PREFIX)
}

/// True when `name` may name a queue group: 1 to 128 ASCII letters, digits, `.`, `_` or `-`.
pub fn is_valid_group(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert_eq!(check("chat.room-1"), Ok(()));
        assert_eq!(check("café"), Ok(()));
        assert_eq!(check(""), Err(ChannelError::Empty));
        assert_eq!(check(&"a".repeat(257)), Err(ChannelError::TooLong));
        for bad in ["a b", "a\tb", "chat.*", ">", "a\u{7}"] {
            assert_eq!(check(bad), Err(ChannelError::ReservedCharacter), "{bad:?}");
        }
    }

    #[test]
    fn inboxes_and_group_names() {
        assert!(is_inbox("_inbox.n1.abc") && !is_inbox("inbox.n1"));
        assert!(is_valid_group("workers-1.eu_west"));
        assert!(!is_valid_group("") && !is_valid_group("a b") && !is_valid_group(&"g".repeat(129)));
    }
}
