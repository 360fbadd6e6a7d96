//! The error policy: for every publish failure, one decision between *retry this event later*
//! (count an attempt, back off), *dead now* (a reason an operator can act on) and *pause*
//! (the broker is down: count nothing, stop publishing, reconnect). The delay math lives in
//! [`crate::backoff`].

use std::time::Duration;

use rand::Rng;

use crate::{
    backoff::{exponential, jitter},
    broker::PublishError,
    config::RetryConfig,
};

/// What to do with an event whose publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Count an attempt and retry after this delay.
    Retry(Duration),
    /// Count an attempt and move the event to `dead`.
    Dead,
    /// The broker is unavailable: count nothing, leave the event pending, pause publishing.
    Pause,
}

/// Retry limits and backoff.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    initial: Duration,
    max: Duration,
    max_attempts: u32,
}

impl RetryPolicy {
    /// From `[retry]`.
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            initial: config.initial_backoff,
            max: config.max_backoff,
            max_attempts: config.max_attempts,
        }
    }

    /// Decides for an event that has failed `attempts_before` times before this failure.
    pub fn decide(&self, error: &PublishError, attempts_before: i32) -> Directive {
        let attempts = u32::try_from(attempts_before)
            .unwrap_or(0)
            .saturating_add(1);
        match error {
            PublishError::Unavailable(_) | PublishError::Timeout => Directive::Pause,
            PublishError::Rejected(_) | PublishError::TooLarge { .. } => Directive::Dead,
            PublishError::Unroutable(_) | PublishError::Nacked | PublishError::Transient(_) => {
                if attempts >= self.max_attempts {
                    Directive::Dead
                } else {
                    Directive::Retry(self.backoff(attempts, &mut rand::rng()))
                }
            }
        }
    }

    /// Delay before retry number `attempt` (1-based): uniformly random ("full jitter") between
    /// `initial` and `min(max, initial * 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let cap = exponential(self.initial, self.max, attempt);
        jitter(self.initial, cap, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::{exponential, jitter};
    use rand::{SeedableRng, rngs::StdRng};

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_attempts,
        })
    }

    #[test]
    fn backoff_stays_within_bounds_and_grows() {
        let p = policy(10);
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..40 {
            let cap = exponential(Duration::from_millis(100), Duration::from_secs(2), attempt);
            for _ in 0..50 {
                let d = p.backoff(attempt, &mut rng);
                assert!(
                    d >= Duration::from_millis(100) && d <= cap,
                    "{attempt}: {d:?}"
                );
            }
        }
        assert_eq!(p.backoff(1, &mut rng), Duration::from_millis(100));
        assert_eq!(
            exponential(Duration::from_millis(100), Duration::from_secs(2), 3),
            Duration::from_millis(400)
        );
        assert_eq!(
            exponential(Duration::from_millis(100), Duration::from_secs(2), 30),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn jitter_spreads_values() {
        let mut rng = StdRng::seed_from_u64(1);
        let values: std::collections::HashSet<_> = (0..100)
            .map(|_| jitter(Duration::ZERO, Duration::from_secs(10), &mut rng))
            .collect();
        assert!(values.len() > 50);
    }

    #[test]
    fn classifies_failures() {
        let p = policy(3);
        assert_eq!(p.decide(&PublishError::Timeout, 0), Directive::Pause);
        assert_eq!(
            p.decide(&PublishError::Unavailable("down".into()), 2),
            Directive::Pause
        );
        assert_eq!(
            p.decide(&PublishError::TooLarge { size: 2, limit: 1 }, 0),
            Directive::Dead
        );
        assert_eq!(
            p.decide(&PublishError::Rejected("bad".into()), 0),
            Directive::Dead
        );
        assert!(matches!(
            p.decide(&PublishError::Unroutable("x".into()), 0),
            Directive::Retry(_)
        ));
        assert!(matches!(
            p.decide(&PublishError::Nacked, 1),
            Directive::Retry(_)
        ));
        assert_eq!(p.decide(&PublishError::Nacked, 2), Directive::Dead);
    }
}
