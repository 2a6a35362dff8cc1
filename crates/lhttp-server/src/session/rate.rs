//! [`MessageRate`]: the per-connection message rate limit, and when persistent excess ends the
//! connection.
//!
//! The limit is a token bucket of `limits.message_burst` tokens refilled at
//! `limits.messages_per_second`, kept in its GCRA form: one "theoretical arrival time" instead
//! of a token count and a refill time. A check is a few integer operations on state owned by
//! the connection's task: no allocation, no lock, no atomic.

use tokio::time::Instant;

use crate::config::Limits;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What to do with one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate: process it.
    Accept,
    /// Over the rate: answer 429 and drop it.
    Refuse,
    /// Over the rate, and the connection has been refused too often: answer 429 and close.
    Close,
}

/// One connection's rate state.
#[derive(Debug)]
pub(crate) struct MessageRate {
    /// Nanoseconds one message costs (one token); 0 when the limit is off.
    interval: u64,
    /// How far the arrival time may run ahead of the clock: `interval * burst`.
    tolerance: u64,
    /// When the bucket would be full again, in nanoseconds since `start`.
    arrival: u64,
    start: Instant,
    close_after: u64,
    window: u64,
    /// Start of the current refusal window, in nanoseconds since `start`.
    window_start: u64,
    refused_in_window: u64,
}

impl MessageRate {
    pub(crate) fn new(limits: &Limits, now: Instant) -> Self {
        let interval = match limits.messages_per_second {
            0 => 0,
            // Rates above one per nanosecond are not limits at all.
            rate => (NANOS_PER_SEC / rate).max(1),
        };
        MessageRate {
            interval,
            tolerance: interval.saturating_mul(limits.message_burst),
            arrival: 0,
            start: now,
            close_after: limits.rate_limit_close_after,
            window: limits.rate_limit_window_ms.saturating_mul(1_000_000),
            window_start: 0,
            refused_in_window: 0,
        }
    }

    /// Takes one token for a message received at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        if self.interval == 0 {
            return Verdict::Accept;
        }
        // u64 nanoseconds last 584 years.
        let t = now.saturating_duration_since(self.start).as_nanos() as u64;
        let next = self.arrival.max(t).saturating_add(self.interval);
        if next - t <= self.tolerance {
            self.arrival = next;
            return Verdict::Accept;
        }
        if t - self.window_start >= self.window {
            self.window_start = t;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if self.close_after != 0 && self.refused_in_window >= self.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(rate: u64, burst: u64, close_after: u64) -> Limits {
        Limits {
            messages_per_second: rate,
            message_burst: burst,
            rate_limit_close_after: close_after,
            rate_limit_window_ms: 1000,
            ..Limits::default()
        }
    }

    #[test]
    fn a_full_bucket_takes_a_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut rate = MessageRate::new(&limits(10, 5, 0), t0);
        for _ in 0..5 {
            assert_eq!(rate.check(t0), Verdict::Accept);
        }
        assert_eq!(rate.check(t0), Verdict::Refuse);
        // 10 per second: one token back every 100 ms.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(rate.check(later), Verdict::Accept);
        assert_eq!(rate.check(later), Verdict::Refuse);
        // A long pause refills the bucket, but never beyond the burst.
        let much_later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(rate.check(much_later), Verdict::Accept);
        }
        assert_eq!(rate.check(much_later), Verdict::Refuse);
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut rate = MessageRate::new(&limits(1000, 1, 0), t0);
        for i in 0..10_000 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(rate.check(at), Verdict::Accept, "message {i}");
        }
    }

    #[test]
    fn persistent_excess_closes_and_an_occasional_one_does_not() {
        let t0 = Instant::now();
        let mut rate = MessageRate::new(&limits(1, 1, 3), t0);
        assert_eq!(rate.check(t0), Verdict::Accept);
        assert_eq!(rate.check(t0), Verdict::Refuse);
        assert_eq!(rate.check(t0), Verdict::Refuse);
        // A new window forgets earlier refusals.
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(rate.check(t1), Verdict::Accept);
        assert_eq!(rate.check(t1), Verdict::Refuse);
        assert_eq!(rate.check(t1), Verdict::Refuse);
        assert_eq!(rate.check(t1), Verdict::Close);
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let t0 = Instant::now();
        let mut rate = MessageRate::new(&limits(0, 0, 1), t0);
        for _ in 0..100_000 {
            assert_eq!(rate.check(t0), Verdict::Accept);
        }
    }
}
