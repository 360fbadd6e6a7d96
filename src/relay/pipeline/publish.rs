//! The confirm window: starting publish calls while channels and `relay.max_in_flight` allow,
//! and taking each call's report back into the schedule (confirmed, dead, retry, unpublished)
//! and the outcomes to save.

use std::time::{Duration, Instant};

use tokio::task::Id;
use uuid::Uuid;

use super::Pipeline;
use crate::{
    broker::Publisher,
    relay::batch::{self, CallReport, Fate},
    store::Failure,
};

/// What a publish call carries, kept to recover if its task fails.
pub(super) struct CallContents(Vec<(Uuid, String, i32)>);

impl<P: Publisher> Pipeline<P> {
    /// Starts publish calls while slots and window allow and events are ready.
    pub(super) fn launch(&mut self, now: Instant) {
        if self.ctx.shutdown.is_cancelled() || !self.buckets.borrow().leased() {
            tracing::trace!(ready = self.schedule.ready_len(), "not launching: no lease");
            return;
        }
        let channels = self.config.channels();
        let window = self.config.max_in_flight;
        let per_call = window.div_ceil(channels).clamp(1, self.config.batch_size);
        while self.calls.len() < channels && self.schedule.in_flight() < window {
            let ready = self.schedule.ready_len();
            if ready == 0 {
                break;
            }
            // Spread what can be in flight evenly over all channels: a call waits for its last
            // confirm, so one big call would hold its aggregates back longer than the others.
            let even = (self.schedule.in_flight() + ready).div_ceil(channels);
            let n = per_call
                .min(window - self.schedule.in_flight())
                .min(even.max(1));
            let mut events = Vec::with_capacity(n);
            while events.len() < n {
                let owned = &self.owned;
                match self.schedule.next(now, |b| owned.binary_search(&b).is_ok()) {
                    Some(event) => events.push(event),
                    None => break,
                }
            }
            if events.is_empty() {
                break;
            }
            let contents = CallContents(
                events
                    .iter()
                    .map(|e| (e.id, e.aggregate_id.clone(), e.bucket))
                    .collect(),
            );
            let handle = self
                .calls
                .spawn(batch::publish_call(self.ctx.clone(), events));
            self.call_contents.insert(handle.id(), contents);
        }
    }

    pub(super) fn call_done(&mut self, joined: Result<(Id, CallReport), tokio::task::JoinError>) {
        let now = Instant::now();
        let report = match joined {
            Ok((id, report)) => {
                self.call_contents.remove(&id);
                report
            }
            Err(error) => {
                // A panicked call: its events stay pending in the table and leave memory; the
                // next rescan (or the next full read) finds them again.
                tracing::error!(%error, "publish call failed");
                if let Some(CallContents(events)) = self.call_contents.remove(&error.id()) {
                    for (id, aggregate, _) in events {
                        self.schedule.abandon(&aggregate, now);
                        let buckets = self.schedule.forget(&[id]);
                        self.in_flight.settled(&buckets);
                    }
                }
                return;
            }
        };
        for (event, fate) in report.events {
            let owned = self.owns(event.bucket);
            match fate {
                Fate::Confirmed => {
                    self.schedule.confirmed(&event, now);
                    self.to_save.confirmed.push(event.id);
                    self.to_save.forget.push(event.id);
                }
                Fate::Dead(error) => {
                    // The aggregate stays busy until the dead state is saved.
                    self.dying.insert(event.id, event.aggregate_id.clone());
                    self.to_save.failures.push(Failure {
                        id: event.id,
                        error,
                        retry_in: Duration::ZERO,
                        dead: true,
                    });
                    self.to_save.forget.push(event.id);
                }
                Fate::Retry(delay, error) => {
                    self.to_save.failures.push(Failure {
                        id: event.id,
                        error,
                        retry_in: delay,
                        dead: false,
                    });
                    if owned {
                        // Its tail leaves memory while it waits (read again once through).
                        let dropped = self.schedule.retry(event, delay, now);
                        self.in_flight.settled(&dropped);
                    } else {
                        self.schedule.abandon(&event.aggregate_id, now);
                        self.to_save.forget.push(event.id);
                    }
                }
                Fate::Unpublished => {
                    if owned {
                        self.schedule.unpublished(event, now);
                    } else {
                        self.schedule.abandon(&event.aggregate_id, now);
                        let buckets = self.schedule.forget(&[event.id]);
                        self.in_flight.settled(&buckets);
                    }
                }
            }
        }
        if let Some(error) = report.broker_down {
            self.ctx.health.set_broker_up(false, &error.to_string());
        }
        // Caught up and events flowing: more were likely written meanwhile; look now rather
        // than at the next poll (reads run one at a time, so this cannot pile up).
        if self.caught_up {
            self.read_due = true;
        }
    }
}
