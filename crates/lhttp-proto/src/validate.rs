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
