//! Following the coordinator's bucket ownership: which buckets the pipeline may publish, what
//! it drops when buckets are lost, and holding acquired buckets back from the main read until
//! a rescan has read their earlier rows.

use std::time::Instant;

use super::{Pipeline, read::Rescan};
use crate::broker::Publisher;

impl<P: Publisher> Pipeline<P> {
    pub(super) fn owns(&self, bucket: i32) -> bool {
        self.owned.binary_search(&bucket).is_ok()
    }

    /// Applies a change of bucket ownership: drops what is queued for lost buckets, holds
    /// back acquired ones from the main read until a rescan has read their earlier rows.
    pub(super) fn sync_ownership(&mut self, now: Instant) {
        let current = self.buckets.borrow().buckets.clone();
        if current == self.owned {
            return;
        }
        let gained: Vec<i32> = current
            .iter()
            .copied()
            .filter(|b| self.owned.binary_search(b).is_err())
            .collect();
        self.owned = current;
        let owned = self.owned.clone();
        let dropped = self
            .schedule
            .drop_unowned(|b| owned.binary_search(&b).is_ok());
        self.in_flight.settled(&dropped);
        self.held_back.retain(|b| owned.binary_search(b).is_ok());
        if !gained.is_empty() && self.cursor > 0 {
            self.held_back.extend(gained);
            self.rescan = Some(Rescan {
                position: 0,
                until: self.cursor,
                releases: true,
            });
            self.last_rescan = now;
        }
    }
}
