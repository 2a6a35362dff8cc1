//! [`AuthThrottle`]: what a client may make the server spend on tokens that fail.
//!
//! Verifying a token is the most expensive thing a client can ask for: an RS256 signature
//! with a 4096-bit key costs about a thousand times a published message, and a client can
//! send a bad token in every message. Three bounds:
//!
//! - a token longer than `limits.max_token_bytes` is refused before it is decoded;
//! - a connection whose `auth` messages are refused `limits.auth_failures_per_connection`
//!   times is closed (the session counts; see `session.rs`);
//! - an address (IPv6: a /64) with `limits.auth_failures_per_ip` failed verifications within
//!   `limits.auth_failure_window_ms` gets 429 for every token it presents, without
//!   verification, for one more window. Refusals do not extend it: a client that keeps trying
//!   gets at most `auth_failures_per_ip` verifications per two windows.
//!
//! The length of an RSA signature need not be checked here: `ring`, under `jsonwebtoken`,
//! refuses a signature whose length is not the key's before any arithmetic, so a forged
//! oversized signature costs a base64 decode, not an exponentiation.
//!
//! Only the authentication path touches this: a message that is not `auth`, and an upgrade
//! without a token, never do.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::Duration,
};

use dashmap::DashMap;
use tokio::time::Instant;

use crate::{config::Limits, security::peers::address_key};

/// Why a token was refused before verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address failed too often recently: 429.
    Throttled,
    /// Longer than `limits.max_token_bytes`: 401, and a failure like a bad signature.
    TooLong,
}

impl Refusal {
    pub(crate) fn status(self) -> u16 {
        match self {
            Refusal::Throttled => 429,
            Refusal::TooLong => 401,
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Throttled => "too many failed authentications from your address: try later",
            Refusal::TooLong => "token too long",
        }
    }
}

/// One address's recent failures.
#[derive(Debug)]
struct Failures {
    window_start: Instant,
    count: u32,
    /// Set once `count` reached the limit: tokens are refused unverified until then.
    refused_until: Option<Instant>,
}

/// Failed authentications per client address; see the module documentation.
#[derive(Debug)]
pub(crate) struct AuthThrottle {
    max_token_bytes: usize,
    /// 0: no per-address limit, and nothing is recorded.
    max_failures: u32,
    window: Duration,
    /// Only addresses with a failure in the last two windows have an entry; expired ones are
    /// swept when the map has grown to twice its size at the last sweep.
    by_address: DashMap<IpAddr, Failures>,
    sweep_above: AtomicUsize,
}

/// Entries below which the map is never swept.
const SWEEP_FLOOR: usize = 1024;

impl AuthThrottle {
    pub(crate) fn new(limits: &Limits) -> AuthThrottle {
        AuthThrottle {
            max_token_bytes: limits.max_token_bytes,
            max_failures: limits.auth_failures_per_ip,
            window: limits.auth_failure_window(),
            by_address: DashMap::new(),
            sweep_above: AtomicUsize::new(SWEEP_FLOOR),
        }
    }

    /// Whether `token`, from `ip`, may be verified at `now`.
    pub(crate) fn admit(&self, ip: IpAddr, token: &str, now: Instant) -> Result<(), Refusal> {
        if self.max_failures != 0 {
            if let Some(failures) = self.by_address.get(&address_key(ip)) {
                if failures.refused_until.is_some_and(|until| now < until) {
                    return Err(Refusal::Throttled);
                }
            }
        }
        if token.len() > self.max_token_bytes {
            self.failed(ip, now);
            return Err(Refusal::TooLong);
        }
        Ok(())
    }

    /// Whether `token`, from a local peer (a Unix socket, in-process), may be verified: only
    /// its size is checked, since such peers have no address to count failures by.
    pub(crate) fn admit_local(&self, token: &str) -> Result<(), Refusal> {
        if token.len() > self.max_token_bytes {
            return Err(Refusal::TooLong);
        }
        Ok(())
    }

    /// A token from `ip` failed verification (or was too long) at `now`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        let mut entry = self
            .by_address
            .entry(address_key(ip))
            .or_insert_with(|| Failures {
                window_start: now,
                count: 0,
                refused_until: None,
            });
        let failures = entry.value_mut();
        let refusing = failures.refused_until.is_some_and(|until| now < until);
        if !refusing && now.duration_since(failures.window_start) >= self.window {
            failures.window_start = now;
            failures.count = 0;
            failures.refused_until = None;
        }
        failures.count = failures.count.saturating_add(1);
        if failures.count >= self.max_failures && failures.refused_until.is_none() {
            // A window too long for the clock (configured in centuries) refuses for a century.
            let century = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
            let until = now.checked_add(self.window).unwrap_or(now + century);
            failures.refused_until = Some(until);
        }
        drop(entry);
        self.sweep(now);
    }

    /// Forgets addresses whose last window and refusal are over, when the map has doubled.
    fn sweep(&self, now: Instant) {
        let len = self.by_address.len();
        if len <= self.sweep_above.load(Relaxed) {
            return;
        }
        let window = self.window;
        self.by_address.retain(|_, failures| {
            let refusing = failures.refused_until.is_some_and(|until| now < until);
            refusing || now.duration_since(failures.window_start) < window
        });
        let kept = self.by_address.len();
        self.sweep_above
            .store(kept.saturating_mul(2).max(SWEEP_FLOOR), Relaxed);
    }

    /// Addresses remembered for their failures.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.by_address.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max: u32, window_ms: u64) -> AuthThrottle {
        AuthThrottle::new(&Limits {
            auth_failures_per_ip: max,
            auth_failure_window_ms: window_ms,
            max_token_bytes: 16,
            ..Limits::default()
        })
    }

    #[test]
    fn an_address_is_refused_for_a_window_after_its_limit_then_forgiven() {
        let throttle = throttle(3, 1000);
        let mut now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.admit(ip, "t", now), Ok(()));
            throttle.failed(ip, now);
        }
        assert_eq!(throttle.admit(ip, "t", now), Err(Refusal::Throttled));
        assert_eq!(throttle.admit(other, "t", now), Ok(()));
        now += Duration::from_millis(1001);
        assert_eq!(throttle.admit(ip, "t", now), Ok(()));
        assert_eq!(
            throttle.admit(ip, "a token longer than sixteen bytes", now),
            Err(Refusal::TooLong)
        );
    }

    #[test]
    fn failures_spread_over_windows_never_refuse() {
        let throttle = throttle(3, 1000);
        let mut now = Instant::now();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..10 {
            throttle.failed(ip, now);
            throttle.failed(ip, now);
            now += Duration::from_millis(1000);
            assert_eq!(throttle.admit(ip, "t", now), Ok(()));
        }
    }

    #[test]
    fn expired_addresses_are_swept() {
        let throttle = throttle(3, 1000);
        let mut now = Instant::now();
        let old = SWEEP_FLOOR as u32 + 1;
        for i in 0..old {
            throttle.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        now += Duration::from_millis(1000);
        // The map reaches twice what the last sweep kept: the old addresses go.
        for i in old..3 * old {
            throttle.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(
            throttle.addresses() <= 2 * old as usize,
            "{}",
            throttle.addresses()
        );
        assert!(
            (0..old).all(|i| !throttle
                .by_address
                .contains_key(&IpAddr::from(i.to_be_bytes()))),
            "expired addresses are forgotten"
        );
    }
}
