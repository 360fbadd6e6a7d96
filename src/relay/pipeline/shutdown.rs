//! Shutdown: draining the publish calls and settles in flight within the
//! [`ShutdownBudget`] of `relay.shutdown_timeout`, abandoning what does not finish in time.

use std::time::Duration;

use super::{Pipeline, idle::Idle};
use crate::broker::Publisher;

impl<P: Publisher> Pipeline<P> {
    /// Stop reading and publishing; let publish calls finish and their outcomes be saved,
    /// within the shutdown budget.
    pub(super) async fn drain(mut self) {
        let budget = ShutdownBudget::new(self.config.shutdown_timeout);
        if !self.calls.is_empty() || !self.to_save.is_empty() {
            tracing::info!(
                calls = self.calls.len(),
                in_flight = self.schedule.in_flight(),
                "draining in-flight batches"
            );
        }
        let deadline = tokio::time::sleep(budget.drain);
        tokio::pin!(deadline);
        loop {
            self.flush();
            if self.calls.is_empty() && self.settles.is_empty() && self.to_save.is_empty() {
                break;
            }
            tokio::select! {
                Some(joined) = self.calls.join_next_with_id() => self.call_done(joined),
                Some(joined) = self.settles.join_next() => self.settle_done(joined),
                Some(joined) = self.reads.join_next() => self.read_done(joined),
                _ = &mut deadline => {
                    tracing::error!(
                        calls = self.calls.len(),
                        unsaved = self.to_save.len(),
                        "shutdown timeout reached with events unsettled; aborting them"
                    );
                    self.ctx.abandon.cancel();
                    // Settles return promptly once abandoned; a publish stuck waiting for
                    // confirms is aborted (its events stay pending and are published again).
                    let grace = tokio::time::timeout(budget.step, async {
                        while let Some(joined) = self.settles.join_next().await {
                            self.settle_done(joined);
                        }
                    });
                    let _ = grace.await;
                    self.calls.abort_all();
                    self.settles.abort_all();
                    break;
                }
            }
        }
        self.reads.abort_all();
        if self.idle != Idle::Awake {
            let _ = tokio::time::timeout(budget.step, self.ctx.store.announce_wake()).await;
        }
    }
}

/// How `relay.shutdown_timeout` is spent once shutdown is requested, so that the process
/// exits within it: batches in flight get the bulk (`drain`); a reserve of a quarter, at most
/// 3 s, is split into four `step`s that bound the grace for abandoned batches, the last
/// database call, stopping the background tasks, and closing the broker connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownBudget {
    /// Time for in-flight batches to publish and settle.
    pub drain: Duration,
    /// Bound of each clean-up step after the drain.
    pub step: Duration,
}

impl ShutdownBudget {
    /// Splits `total` (`relay.shutdown_timeout`).
    pub fn new(total: Duration) -> Self {
        let reserve = (total / 4).min(Duration::from_secs(3));
        Self {
            drain: total - reserve,
            step: reserve / 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_budget_fits_the_timeout() {
        for total in [1, 4, 20, 25, 120].map(Duration::from_secs) {
            let budget = ShutdownBudget::new(total);
            assert!(budget.drain + budget.step * 4 <= total, "{total:?}");
            assert!(budget.drain >= total * 3 / 4, "{total:?}");
        }
        let default = ShutdownBudget::new(Duration::from_secs(20));
        assert_eq!(default.drain, Duration::from_secs(17));
        assert_eq!(default.step, Duration::from_millis(750));
    }
}
