//! Character rules shared by the parser and the builders, so that anything built in code
//! encodes to bytes that parse back to the same message.

/// Longest command and header name accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;

/// A command: 1..=256 bytes, no ASCII whitespace, no control characters.
pub fn is_command(s: &[u8]) -> bool {
    !s.is_empty() && s.len() <= MAX_TOKEN_LEN && s.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// A header name: like a command, and without `:`.
pub fn is_header_name(s: &[u8]) -> bool {
    is_command(s) && !s.contains(&b':')
}

/// A header value: no control characters other than horizontal tab.
pub fn is_header_value(s: &[u8]) -> bool {
    s.iter().all(|&b| (b >= b' ' && b != 0x7f) || b == b'\t')
}

/// Strips spaces and tabs at both ends.
pub fn trim(s: &[u8]) -> &[u8] {
    let is_blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_blank(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !is_blank(b))
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// True when `s` holds a space. A plain loop: names and commands are short, and for them a
/// `memchr` call (what `contains` does for bytes) costs more than it saves.
#[allow(clippy::manual_contains)]
#[inline]
pub fn has_space(s: &[u8]) -> bool {
    s.iter().any(|&b| b == b' ')
}

/// True when every byte is printable ASCII (0x20..=0x7e): no control character, no DEL, nothing
/// outside ASCII. Checks eight bytes per step (SWAR) — this is the common case of a header
/// line, and proving it lets the parser skip UTF-8 validation and the per-byte rules.
pub fn is_printable_ascii(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        // A byte below 0x20 borrows into its own high bit (which `!w` keeps only if it was
        // clear); a byte of 0x7f or more has its high bit set after adding 1, or before.
        // Borrows and carries can only flag bytes after one already flagged, so "any flag" is
        // exact.
        let below_space = w.wrapping_sub(ONES * 0x20) & !w;
        let del_or_above = w.wrapping_add(ONES) | w;
        if (below_space | del_or_above) & HIGH != 0 {
            return false;
        }
    }
    words.remainder().iter().all(|&b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_at_a_time(s: &[u8]) -> bool {
        s.iter().all(|&b| (0x20..=0x7e).contains(&b))
    }

    #[test]
    fn printable_ascii_agrees_with_the_byte_rule_for_every_byte_in_every_position() {
        // Every byte value, at every offset of lines spanning zero, one and two words plus a
        // remainder, surrounded by printable bytes (and by the edge values 0x20 and 0x7e).
        for len in [1, 7, 8, 9, 16, 19] {
            for filler in [b'a', 0x20, 0x7e] {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut line = vec![filler; len];
                        line[at] = b;
                        assert_eq!(
                            is_printable_ascii(&line),
                            byte_at_a_time(&line),
                            "byte {b:#04x} at {at} of {len}"
                        );
                    }
                }
            }
        }
        assert!(is_printable_ascii(b""));
    }

    #[test]
    fn a_bad_byte_after_another_is_still_caught() {
        // Borrows from a first low byte must not hide (or invent) anything.
        assert!(!is_printable_ascii(b"\x00\x7fabcdef"));
        assert!(!is_printable_ascii(b"abcdef\x1f\x20"));
        assert!(!is_printable_ascii(b"abc\xff\xffdefgh"));
        assert!(is_printable_ascii(b" !~}abcdefghijk"));
    }
}
