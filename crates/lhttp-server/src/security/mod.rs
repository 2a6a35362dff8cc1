//! Who may connect and what they may do: token verification ([`auth`]), channel rules
//! ([`permissions`]), failed-authentication throttling ([`throttle`]), connection counts per
//! client address ([`peers`]) and the connection limits a new connection must fit in
//! ([`admission`]).

pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod peers;
pub(crate) mod permissions;
pub(crate) mod throttle;

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use auth::Verifier;
use permissions::Permissions;
use throttle::AuthThrottle;

/// What deciding "who is this, and may they" needs. The keys and the rules can be replaced
/// while serving ([`crate::reload`]); the throttle's counts of failures carry over.
pub(crate) struct Security {
    /// Token verification keys (`[auth]`), replaced whole by a reload.
    pub(crate) verifier: ArcSwap<Verifier>,
    /// The compiled `[[auth.rules]]`, replaced whole by a reload.
    pub(crate) permissions: ArcSwap<Permissions>,
    /// How many times the rules were replaced: a connection whose grants are older asks for
    /// new ones ([`crate::session::connection::Connection::follow_rules`]).
    pub(crate) rules_generation: AtomicU64,
    /// Failed authentications per address, and the token size limit.
    pub(crate) throttle: AuthThrottle,
}

impl Security {
    pub(crate) fn new(
        verifier: Verifier,
        permissions: Permissions,
        throttle: AuthThrottle,
    ) -> Self {
        Security {
            verifier: ArcSwap::from_pointee(verifier),
            permissions: ArcSwap::from_pointee(permissions),
            rules_generation: AtomicU64::new(0),
            throttle,
        }
    }

    /// Puts new keys and rules in force: new sign-ins are checked with the keys, and every
    /// connection takes the rules at its next message or keepalive tick.
    pub(crate) fn replace(&self, verifier: Verifier, permissions: Permissions) {
        self.verifier.store(std::sync::Arc::new(verifier));
        self.permissions.store(std::sync::Arc::new(permissions));
        self.rules_generation.fetch_add(1, Ordering::Release);
    }
}
