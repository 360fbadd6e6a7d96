//! Saving outcomes: batched settles of what the publish calls reported (at most two at once),
//! and taking a finished settle's events out of memory.

use std::time::Instant;

use super::Pipeline;
use crate::{
    broker::Publisher,
    relay::batch::{self, Outcomes},
};

impl<P: Publisher> Pipeline<P> {
    /// Saves what is waiting, in one batched settle (at most two run at once).
    pub(super) fn flush(&mut self) {
        if self.to_save.is_empty() || self.settles.len() >= 2 {
            return;
        }
        let outcomes = std::mem::take(&mut self.to_save);
        self.settles
            .spawn(batch::settle(self.ctx.clone(), outcomes));
    }

    pub(super) fn settle_done(&mut self, joined: Result<(Outcomes, bool), tokio::task::JoinError>) {
        match joined {
            Ok((outcomes, _saved)) => {
                let now = Instant::now();
                for failure in outcomes.failures.iter().filter(|f| f.dead) {
                    if let Some(aggregate) = self.dying.remove(&failure.id) {
                        self.schedule.dead(&aggregate, now);
                    }
                }
                if self.reading.is_some() {
                    // The running read may return these as pending, or as the predecessor
                    // (`prev_seq`) of a new event: that predecessor is settled, not unread.
                    self.saved_during_read
                        .extend(outcomes.forget.iter().copied());
                    self.saved_seqs_during_read
                        .extend(self.schedule.seqs_of(&outcomes.forget));
                }
                let buckets = self.schedule.forget(&outcomes.forget);
                self.in_flight.settled(&buckets);
            }
            Err(error) => {
                // Its events stay in memory as held; they are pending in the table and are
                // published again after a restart.
                tracing::error!(%error, "settle task failed");
            }
        }
    }
}
