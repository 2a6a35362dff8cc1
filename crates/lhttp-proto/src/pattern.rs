//! Channel patterns, as NATS writes subjects: tokens separated by `.`, `*` matches exactly one
//! token, `>` as the last token matches one or more tokens. Channel rules, channel options and
//! wildcard subscriptions all use them.
//!
//! ```
//! use lhttp_proto::pattern::Pattern;
//!
//! let rooms = Pattern::parse("chat.*").unwrap();
//! assert!(rooms.matches("chat.lobby"));
//! assert!(!rooms.matches("chat.lobby.private"));
//! assert!(Pattern::parse("sensor.>").unwrap().matches("sensor.7.temp"));
//! ```

/// Why a text is not a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The text is empty.
    #[error("empty pattern")]
    Empty,
    /// Two dots in a row, or a dot at either end.
    #[error("empty token (two dots, or a dot at an end)")]
    EmptyToken,
    /// `>` elsewhere than as the last token.
    #[error("'>' may only be the last token")]
    RestNotLast,
    /// `*` or `>` inside a token.
    #[error("'*' and '>' must be whole tokens")]
    PartialWildcard,
    /// Whitespace or a control character.
    #[error("whitespace or control character")]
    ReservedCharacter,
}

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This exact token.
    Literal(Box<str>),
    /// `*`: one token.
    One,
    /// `>`: one or more tokens, last only.
    Rest,
}

/// A parsed channel pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let count = text.split('.').count();
        let tokens = text
            .split('.')
            .enumerate()
            .map(|(i, token)| match token {
                "" => Err(PatternError::EmptyToken),
                "*" => Ok(Token::One),
                ">" if i + 1 == count => Ok(Token::Rest),
                ">" => Err(PatternError::RestNotLast),
                t if t.contains(['*', '>']) => Err(PatternError::PartialWildcard),
                t if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                    Err(PatternError::ReservedCharacter)
                }
                t => Ok(Token::Literal(t.into())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Pattern { tokens })
    }

    /// True when `channel` matches. Allocates nothing.
    pub fn matches(&self, channel: &str) -> bool {
        let mut parts = channel.split('.');
        for token in &self.tokens {
            match token {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(l) => {
                    if parts.next() != Some(l) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// True when it matches every channel (`>`).
    pub fn is_everything(&self) -> bool {
        self.tokens == [Token::Rest]
    }

    /// True when every channel `other` matches, this pattern matches too. (A channel name is a
    /// pattern of literal tokens, so this also says whether a subscription pattern stays
    /// within a rule.)
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut theirs = other.tokens.iter();
        for token in &self.tokens {
            match (token, theirs.next()) {
                // `>` takes one or more tokens, whatever they are.
                (Token::Rest, Some(_)) => return true,
                (_, None) => return false,
                // One token: a literal or `*`, never `>`, which may stand for several.
                (Token::One, Some(Token::Literal(_) | Token::One)) => {}
                (Token::Literal(mine), Some(Token::Literal(t))) if mine == t => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }

    /// True when some literal token contains `text`.
    pub fn has_in_literals(&self, text: &str) -> bool {
        self.tokens
            .iter()
            .any(|t| matches!(t, Token::Literal(l) if l.contains(text)))
    }

    /// The pattern with `placeholder` replaced by `value` inside its literal tokens. `value` is
    /// taken literally: a `*` or `>` in it is no wildcard, and a `.` in it makes the token one
    /// that no channel token can equal.
    pub fn replace_in_literals(&self, placeholder: &str, value: &str) -> Pattern {
        let tokens = self
            .tokens
            .iter()
            .map(|t| match t {
                Token::Literal(l) => Token::Literal(l.replace(placeholder, value).into()),
                other => other.clone(),
            })
            .collect();
        Pattern { tokens }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, channel: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(channel)
    }

    #[test]
    fn tokens_match_like_nats_subjects() {
        assert!(matches("public.*", "public.lobby"));
        assert!(!matches("public.*", "public"));
        assert!(!matches("public.*", "public.a.b"));
        assert!(matches("admin.>", "admin.x"));
        assert!(matches("admin.>", "admin.x.y.z"));
        assert!(!matches("admin.>", "admin"));
        assert!(!matches("admin.>", "administrator.x"));
        assert!(matches(">", "anything.at.all"));
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
        assert!(matches("lobby", "lobby"));
        assert!(!matches("lobby", "lobby2"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (bad, error) in [
            ("", PatternError::Empty),
            ("a..b", PatternError::EmptyToken),
            (".a", PatternError::EmptyToken),
            ("a.", PatternError::EmptyToken),
            ("a.>.b", PatternError::RestNotLast),
            ("a*", PatternError::PartialWildcard),
            ("a.b>", PatternError::PartialWildcard),
            ("a b", PatternError::ReservedCharacter),
        ] {
            assert_eq!(Pattern::parse(bad), Err(error), "{bad:?}");
        }
    }

    #[test]
    fn a_pattern_covers_another_when_it_matches_everything_the_other_can() {
        let covers = |a: &str, b: &str| {
            Pattern::parse(a)
                .unwrap()
                .covers(&Pattern::parse(b).unwrap())
        };
        assert!(covers(">", "a.*"));
        assert!(covers("a.>", "a.b.>"));
        assert!(covers("a.>", "a.*"));
        assert!(covers("a.*", "a.b"));
        assert!(covers("a.*", "a.*"));
        assert!(covers("a.*.c", "a.*.c"));
        assert!(!covers("a.*", "a.>"), "a.> matches a.b.c");
        assert!(!covers("a.b", "a.*"), "a.* matches a.c");
        assert!(!covers("a.*", "a.b.c"));
        assert!(!covers("a.>", "a"));
        assert!(!covers("a.*.c", "a.*.*"));
        assert!(!covers("a.b.>", "a.>"));
    }

    #[test]
    fn replaced_values_are_literal() {
        let p = Pattern::parse("user.{sub}.*").unwrap();
        assert!(p.has_in_literals("{sub}"));
        let alice = p.replace_in_literals("{sub}", "alice");
        assert!(alice.matches("user.alice.inbox"));
        assert!(!alice.matches("user.bob.inbox"));
        assert!(
            !p.replace_in_literals("{sub}", "*")
                .matches("user.bob.inbox")
        );
        assert!(
            !p.replace_in_literals("{sub}", "a.b")
                .matches("user.a.b.inbox")
        );
    }
}
