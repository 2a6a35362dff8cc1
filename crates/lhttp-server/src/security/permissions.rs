//! Channel permissions: which channels a connection may subscribe and publish to.
//!
//! Rules from `[[auth.rules]]` and the `channels` claim of a token are compiled once per
//! identity into [`Grants`]: the patterns that apply to that connection, with `{sub}` already
//! replaced. A connection with no restriction holds no `Grants` at all, so a node without rules
//! pays one branch per subscribe or publish and no matching.
//!
//! Patterns follow NATS subjects: tokens separated by `.`, `*` matches exactly one token, `>`
//! as the last token matches one or more tokens. `{sub}` in a token is replaced by the user id;
//! the id is matched literally (an id `*` matches only a token `*`, which no channel name can
//! hold), and an id containing `.` can never match a token.

use std::sync::Arc;

use lhttp_proto::pattern::Pattern;

use crate::{
    Rejection,
    config::{AuthConfig, ChannelRule},
    security::auth::User,
    transport::Peer,
};

/// The placeholder for the user id in a pattern.
const SUB: &str = "{sub}";

/// A rule's pattern for `sub`, the connection's user id (`None`: anonymous, and a pattern with
/// `{sub}` then applies to nothing). The id is matched literally.
fn for_user(pattern: &Pattern, sub: Option<&str>) -> Option<Pattern> {
    if !pattern.has_in_literals(SUB) {
        return Some(pattern.clone());
    }
    Some(pattern.replace_in_literals(SUB, sub?))
}

/// What one restricted connection may do: the patterns that apply to it, `{sub}` resolved.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    subscribe: Access,
    publish: Access,
}

#[derive(Debug, Default)]
struct Access {
    /// A `>` pattern was granted: no matching needed.
    everything: bool,
    patterns: Vec<Pattern>,
}

impl Access {
    fn add(&mut self, pattern: Pattern) {
        if pattern.is_everything() {
            self.everything = true;
        } else if !self.patterns.contains(&pattern) {
            self.patterns.push(pattern);
        }
    }

    fn extend_from(&mut self, pattern: Option<Pattern>) {
        if let Some(p) = pattern {
            self.add(p);
        }
    }

    fn allows(&self, channel: &str) -> bool {
        self.everything || self.patterns.iter().any(|p| p.matches(channel))
    }
}

impl Grants {
    /// True when `channel` may be subscribed to.
    pub(crate) fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe.allows(channel)
    }

    /// True when `pattern` may be subscribed to: one granted pattern matches every channel it
    /// could match, so a wildcard never reaches further than the rules.
    pub(crate) fn may_subscribe_pattern(&self, pattern: &Pattern) -> bool {
        self.subscribe.everything || self.subscribe.patterns.iter().any(|p| p.covers(pattern))
    }

    /// True when `channel` may be published to.
    pub(crate) fn may_publish(&self, channel: &str) -> bool {
        self.publish.allows(channel)
    }
}

/// The `channels` claim of a token: patterns the token grants, and whether they replace the
/// configured rules for this connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TokenChannels {
    pub(crate) subscribe: Vec<Pattern>,
    pub(crate) publish: Vec<Pattern>,
    /// `only: true`: the token's patterns are all this connection may use (narrowing);
    /// otherwise they are added to what the rules allow (extending).
    pub(crate) only: bool,
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    pattern: Pattern,
    subscribe: bool,
    publish: bool,
    anonymous: bool,
    roles: Vec<String>,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl Rule {
    /// A rule that names `uids` or `gids` applies only to Unix-socket clients with those
    /// credentials (and `roles`, if it names any); other rules apply to a Unix-socket client
    /// as to an authenticated one.
    fn applies_to(&self, user: Option<&User>, peer: &Peer) -> bool {
        let has_role = || {
            self.roles.is_empty() || user.is_some_and(|u| self.roles.iter().any(|r| u.has_role(r)))
        };
        if !self.uids.is_empty() || !self.gids.is_empty() {
            return peer
                .credentials()
                .is_some_and(|c| self.uids.contains(&c.uid) || self.gids.contains(&c.gid))
                && has_role();
        }
        let authenticated = user.is_some() || peer.credentials().is_some();
        match authenticated {
            false => self.anonymous && self.roles.is_empty(),
            true => has_role(),
        }
    }
}

/// The configured rules, compiled when the server is built.
#[derive(Debug)]
pub(crate) struct Permissions {
    rules: Vec<Rule>,
    /// What anonymous connections may do, computed once (`None`: no rules, anything).
    anonymous: Option<Arc<Grants>>,
}

impl Permissions {
    pub(crate) fn new(config: &AuthConfig) -> Result<Permissions, String> {
        let rules = config
            .rules
            .iter()
            .map(|r: &ChannelRule| {
                Ok(Rule {
                    pattern: Pattern::parse(&r.channels)
                        .map_err(|e| format!("auth.rules channels {:?}: {e}", r.channels))?,
                    subscribe: r.subscribe,
                    publish: r.publish,
                    anonymous: r.anonymous,
                    roles: r.roles.clone(),
                    uids: r.uids.clone(),
                    gids: r.gids.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut permissions = Permissions {
            rules,
            anonymous: None,
        };
        permissions.anonymous = permissions.grants_for(None, &Peer::Ip(([0, 0, 0, 0], 0).into()));
        Ok(permissions)
    }

    /// What anonymous connections may do (`None`: anything).
    pub(crate) fn anonymous(&self) -> Option<Arc<Grants>> {
        self.anonymous.clone()
    }

    /// What a connection from `peer` (authenticated as `user`, if it is) may do.
    pub(crate) fn grants_of(&self, user: Option<&User>, peer: &Peer) -> Option<Arc<Grants>> {
        match (user, peer) {
            // The program that embeds the server is not restricted, unless it acts as a user.
            (None, Peer::InProcess) => None,
            (None, Peer::Ip(_)) => self.anonymous(),
            _ => self.grants_for(user, peer),
        }
    }

    /// Compiles what `user`, connected from `peer`, may do; `None` means unrestricted.
    fn grants_for(&self, user: Option<&User>, peer: &Peer) -> Option<Arc<Grants>> {
        let claim = user.and_then(User::token_channels);
        let only = claim.is_some_and(|c| c.only);
        if self.rules.is_empty() && !only {
            return None;
        }
        let sub = user.map(User::id);
        let mut grants = Grants::default();
        if !only {
            for rule in self.rules.iter().filter(|r| r.applies_to(user, peer)) {
                if let Some(pattern) = for_user(&rule.pattern, sub) {
                    if rule.subscribe {
                        grants.subscribe.add(pattern.clone());
                    }
                    if rule.publish {
                        grants.publish.add(pattern);
                    }
                }
            }
        }
        if let Some(claim) = claim {
            for p in &claim.subscribe {
                grants.subscribe.extend_from(for_user(p, sub));
            }
            for p in &claim.publish {
                grants.publish.extend_from(for_user(p, sub));
            }
        }
        Some(Arc::new(grants))
    }
}

/// Checks every channel of a subscribe list before any is subscribed (all or nothing).
pub(crate) fn check_subscribe<'a>(
    grants: &Grants,
    mut channels: impl Iterator<Item = &'a str>,
) -> Result<(), Rejection> {
    match channels.find(|c| !grants.may_subscribe(c)) {
        None => Ok(()),
        Some(c) => Err(denied("subscribe to", c)),
    }
}

/// Checks every channel of a publish list before the message goes anywhere.
pub(crate) fn check_publish<'a>(
    grants: &Grants,
    mut channels: impl Iterator<Item = &'a str>,
) -> Result<(), Rejection> {
    // A reply address is the right to answer one request, handed over with the request:
    // whoever holds one may answer there, whatever the rules say. A connection's own inbox is
    // not: a plain message to it needs a rule like any channel (e.g. `_inbox.>`), so an
    // address handed out cannot be used against its owner where rules are in force (see
    // `crate::request`).
    match channels.find(|c| !crate::requests::inbox::is_reply_address(c) && !grants.may_publish(c))
    {
        None => Ok(()),
        Some(c) => Err(denied("publish to", c)),
    }
}

fn denied(what: &str, channel: &str) -> Rejection {
    // Channel names are validated (no control characters) before this, and bounded in length.
    Rejection::forbidden(format!("not allowed to {what} channel {channel}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_is_replaced_literally() {
        let p = Pattern::parse("user.{sub}.*").unwrap();
        let alice = for_user(&p, Some("alice")).unwrap();
        assert!(alice.matches("user.alice.inbox"));
        assert!(!alice.matches("user.bob.inbox"));
        // An id with wildcard or separator characters cannot widen the pattern.
        assert!(!for_user(&p, Some("*")).unwrap().matches("user.bob.inbox"));
        assert!(!for_user(&p, Some("a.b")).unwrap().matches("user.a.b.inbox"));
        assert!(for_user(&p, None).is_none());
    }
}
