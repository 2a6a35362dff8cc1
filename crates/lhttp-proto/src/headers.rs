//! [`Headers`]: the ordered header list of a message, looked up case-insensitively.

use crate::{Text, error::BuildError, validate};

/// One header: its name as the sender spelled it, and its trimmed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    name: Text,
    value: Text,
}

impl Header {
    /// The name, in the sender's spelling.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value, trimmed of surrounding spaces and tabs.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The value as shared text.
    pub fn value_text(&self) -> &Text {
        &self.value
    }
}

/// The headers of a message, in the order they were received or added.
///
/// Names keep their original spelling and are compared ASCII-case-insensitively. A name may
/// appear more than once; [`Headers::get`] returns the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<Header>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        Headers {
            entries: Vec::with_capacity(n),
        }
    }

    /// Appends a header the parser already validated.
    pub(crate) fn push_unchecked(&mut self, name: Text, value: Text) {
        self.entries.push(Header { name, value });
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name).map(|h| h.value.as_str())
    }

    /// The first value of `name` as shared text.
    pub fn get_text(&self, name: &str) -> Option<&Text> {
        self.find(name).map(|h| &h.value)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// True when `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// Every header, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Header> {
        self.entries.iter()
    }

    /// Adds a header after the existing ones. The value is trimmed of surrounding spaces and
    /// tabs, as a receiver would trim it.
    pub fn append(
        &mut self,
        name: impl Into<Text>,
        value: impl Into<Text>,
    ) -> Result<(), BuildError> {
        let (name, value) = checked(name.into(), value.into())?;
        self.entries.push(Header { name, value });
        Ok(())
    }

    /// Sets `name` to `value`: the first occurrence is replaced in place (keeping the header
    /// order stable), later occurrences are removed; if absent, the header is appended.
    pub fn set(&mut self, name: impl Into<Text>, value: impl Into<Text>) -> Result<(), BuildError> {
        let (name, value) = checked(name.into(), value.into())?;
        self.set_unchecked(name, value);
        Ok(())
    }

    /// [`Headers::set`] for a name and value known to be valid.
    pub(crate) fn set_unchecked(&mut self, name: Text, value: Text) {
        match self.position(&name) {
            Some(i) => {
                self.entries[i].value = value;
                let mut index = 0;
                self.entries.retain(|h| {
                    let keep = index <= i || !h.name.eq_ignore_ascii_case(&name);
                    index += 1;
                    keep
                });
            }
            None => self.entries.push(Header { name, value }),
        }
    }

    /// Removes every occurrence of `name`; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|h| !h.name.eq_ignore_ascii_case(name));
        before - self.entries.len()
    }

    /// Keeps only the headers for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Header) -> bool) {
        self.entries.retain(|h| keep(h));
    }

    fn find(&self, name: &str) -> Option<&Header> {
        self.entries
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))
    }

    pub(crate) fn encoded_len(&self) -> usize {
        self.entries
            .iter()
            .map(|h| h.name.len() + 1 + h.value.len() + 2)
            .sum()
    }
}

fn checked(name: Text, value: Text) -> Result<(Text, Text), BuildError> {
    if !validate::is_header_name(name.as_bytes()) {
        return Err(BuildError::InvalidHeaderName(name.to_string()));
    }
    let trimmed = validate::trim(value.as_bytes());
    if !validate::is_header_value(trimmed) {
        return Err(BuildError::InvalidHeaderValue(name.to_string()));
    }
    let value = if trimmed.len() == value.len() {
        value
    } else {
        let start = trimmed.as_ptr() as usize - value.as_ptr() as usize;
        Text::slice_checked(value.as_bytes(), start, start + trimmed.len())
    };
    Ok((name, value))
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}
