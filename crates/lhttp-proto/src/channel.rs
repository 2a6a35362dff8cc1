//! The rules channel names follow, shared by the server (which refuses other names with 400)
//! and the clients (which can check before sending).

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
}
