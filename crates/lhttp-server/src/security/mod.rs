//! Who may connect and what they may do: token verification ([`auth`]), channel rules
//! ([`permissions`]), failed-authentication throttling ([`throttle`]), connection counts per
//! client address ([`peers`]) and the connection limits a new connection must fit in
//! ([`admission`]).

pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod peers;
pub(crate) mod permissions;
pub(crate) mod throttle;

use auth::Verifier;
use permissions::Permissions;
use throttle::AuthThrottle;

/// What deciding "who is this, and may they" needs: read-only after build, except the
/// throttle's counts of failures.
pub(crate) struct Security {
    /// Token verification keys, read once at build.
    pub(crate) verifier: Verifier,
    /// The compiled `[[auth.rules]]`.
    pub(crate) permissions: Permissions,
    /// Failed authentications per address, and the token size limit.
    pub(crate) throttle: AuthThrottle,
}
