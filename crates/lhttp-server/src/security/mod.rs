//! Who may connect and what they may do: token verification ([`auth`]), channel rules
//! ([`permissions`]), failed-authentication throttling ([`throttle`]) and connection counts per
//! client address ([`peers`]).

pub(crate) mod auth;
pub(crate) mod peers;
pub(crate) mod permissions;
pub(crate) mod throttle;
