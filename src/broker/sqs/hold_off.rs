//! The hold-off after SQS failed whole calls. `connect` probes the queues with
//! GetQueueAttributes, but that probe can succeed while SendMessageBatch keeps failing
//! (throttling, a missing `sqs:SendMessage` permission, a KMS key problem). Without a memory
//! of the failure the relay would loop connect -> publish -> pause with no delay, flapping
//! readiness and hammering SQS; with it, `connect` refuses until a growing, jittered delay
//! (250 ms doubling to 30 s) has passed, and the pipeline's reconnect loop waits.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::backoff::ReconnectBackoff;

#[derive(Debug, Default)]
struct State {
    backoff: ReconnectBackoff,
    /// When `connect` may probe again, and the failure that set it.
    until: Option<(Instant, String)>,
}

/// Remembers whole-call failures across `publish` and `connect`.
#[derive(Debug, Default)]
pub struct HoldOff {
    state: Mutex<State>,
}

impl HoldOff {
    /// A publish had a whole call fail as "SQS unavailable": hold off longer than last time.
    pub fn failed(&self, reason: &str) {
        let mut state = self.lock();
        let delay = state.backoff.next_delay();
        state.until = Some((Instant::now() + delay, reason.to_owned()));
    }

    /// A publish got through to SQS: back to the shortest delay.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        state.backoff.reset();
        state.until = None;
    }

    /// The time left before `connect` may probe, and the failure that caused it.
    pub fn remaining(&self) -> Option<(Duration, String)> {
        let state = self.lock();
        let (until, reason) = state.until.as_ref()?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| (left, reason.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every write is one assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_hold_off_longer_and_success_resets() {
        let hold = HoldOff::default();
        assert!(hold.remaining().is_none());

        hold.failed("RequestThrottled: slow down");
        let (first, reason) = hold.remaining().unwrap();
        assert_eq!(reason, "RequestThrottled: slow down");
        tokio::time::advance(first).await;
        assert!(hold.remaining().is_none(), "the hold-off ends");

        // Repeated failures grow the delay (jittered within [cap/2, cap], cap doubling).
        for _ in 0..6 {
            hold.failed("again");
        }
        let (later, _) = hold.remaining().unwrap();
        assert!(later > first, "{later:?} after {first:?}");

        hold.succeeded();
        assert!(hold.remaining().is_none());
        hold.failed("once more");
        let (reset, _) = hold.remaining().unwrap();
        assert!(reset <= Duration::from_millis(250), "{reset:?}");
    }
}
