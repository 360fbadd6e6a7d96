//! Backoff math shared by every retry and reconnect loop: capped exponential growth with
//! jitter ([`exponential`], [`jitter`]) and the reconnect schedule ([`ReconnectBackoff`]).
//! Nothing here does I/O; the loops that wait on it live with what they connect to.

use std::time::Duration;

use rand::Rng;

/// `min(max, base * 2^(attempt-1))` without overflow.
pub fn exponential(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// A uniformly random duration in `[low, high]`.
pub fn jitter(low: Duration, high: Duration, rng: &mut impl Rng) -> Duration {
    if high <= low {
        return low;
    }
    let span = (high - low).as_millis().min(u64::MAX as u128) as u64;
    low + Duration::from_millis(rng.random_range(0..=span))
}

/// Reconnect backoff for paused brokers and lost databases: doubles from 250 ms to 30 s,
/// with jitter so replicas do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct ReconnectBackoff {
    attempt: u32,
}

impl ReconnectBackoff {
    /// Starts at the first (shortest) delay.
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let cap = exponential(
            Duration::from_millis(250),
            Duration::from_secs(30),
            self.attempt,
        );
        jitter(cap / 2, cap, &mut rand::rng())
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        Self::new()
    }
}
