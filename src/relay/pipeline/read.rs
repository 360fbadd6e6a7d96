//! Reading the backlog: the main read after the cursor and the rescans before it, one read at
//! a time, the ordering checks on what a read returns, and the database backoff after a
//! failed read.
//!
//! **Memory.** Every read, main or rescan, starts only while `held + relay.batch_size <=
//! relay.max_pending_in_memory`, and only reads add events to memory, so the relay never
//! holds more than `relay.max_pending_in_memory` events. A rescan that finds memory full
//! pauses at its position and goes on as events leave; while both reads want to run they
//! take turns, so neither starves the other.
//!
//! **Parked aggregates.** A read leaves in the table the tail of an aggregate whose head is
//! retrying (see [`crate::relay::scheduler`]); once the head is confirmed or dead, a rescan
//! from that head's `seq` reads the tail again, in order.
//!
//! **Takeover.** Buckets just acquired are *held back*: the main read does not take their
//! rows; a rescan from 0 does, in `seq` order, so an acquired aggregate's earlier events
//! (below the cursor) are read before its later ones. That rescan follows the cursor (its end
//! moves up with every main read) and the buckets are let go once it has caught up. Its
//! events are publishable as it reads them, so an inherited backlog of any depth flows
//! through bounded memory.

use std::time::Instant;

use super::Pipeline;
use crate::{
    broker::Publisher,
    relay::scheduler::Added,
    store::{ReadRow, StoreError},
};

/// Which read is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadKind {
    /// After the cursor.
    Main,
    /// Before the cursor (a rescan).
    Rescan,
}

/// A rescan in progress: rows with `seq` in `(position, until]` are still to be read again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rescan {
    pub(super) position: i64,
    pub(super) until: i64,
    /// It reads the held-back buckets: it follows the cursor, and they are let go once it is
    /// done.
    pub(super) releases: bool,
}

pub(super) type ReadResult = Result<Vec<ReadRow>, StoreError>;

impl<P: Publisher> Pipeline<P> {
    /// Asks for a rescan from `after` (exclusive) as soon as none runs: of everything before
    /// the cursor (`after` 0: a gap, an empty wake-up) or of the tails that parked aggregates
    /// left in the table (from the lowest of their heads).
    pub(super) fn request_rescan(&mut self, after: i64) {
        self.rescan_soon = Some(self.rescan_soon.map_or(after, |a| a.min(after)));
    }

    pub(super) fn start_rescan_when_due(&mut self, now: Instant) {
        if self.rescan.is_some() || self.cursor == 0 {
            return;
        }
        let periodic = now.duration_since(self.last_rescan) >= self.config.rescan_interval;
        let position = match self.rescan_soon.take() {
            _ if periodic => 0,
            Some(after) if after < self.cursor => after.max(0),
            _ => return,
        };
        self.rescan = Some(Rescan {
            position,
            until: self.cursor,
            releases: false,
        });
        // Only a rescan from the start stands for the periodic one.
        if position == 0 {
            self.last_rescan = now;
        }
    }

    pub(super) fn wanted_read(&self, now: Instant) -> Option<ReadKind> {
        if self.reading.is_some()
            || self.ctx.shutdown.is_cancelled()
            || now < self.read_blocked_until
            || !self.buckets.borrow().usable()
            // Room for a whole read, whichever it is.
            || self.schedule.held() + self.config.batch_size > self.config.max_pending_in_memory
        {
            return None;
        }
        let main = !self.caught_up || self.read_due;
        match (main, self.rescan.is_some()) {
            // Take turns while both want to read.
            (true, true) if self.last_read == ReadKind::Main => Some(ReadKind::Rescan),
            (true, _) => Some(ReadKind::Main),
            (false, true) => Some(ReadKind::Rescan),
            (false, false) => None,
        }
    }

    pub(super) fn start_read(&mut self, kind: ReadKind) {
        let (ownership, claim) = self.in_flight.begin_claim(&mut self.buckets);
        if !ownership.usable() {
            return;
        }
        let after = match (kind, self.rescan) {
            (ReadKind::Rescan, Some(rescan)) => rescan.position,
            _ => self.cursor,
        };
        if kind == ReadKind::Main {
            self.read_due = false;
            self.last_main_read = Instant::now();
        }
        self.last_read = kind;
        let store = self.ctx.store.clone();
        let limit = self.config.batch_size;
        self.reads.spawn(async move {
            store
                .read_pending(after, limit, Some((&ownership.buckets, ownership.count)))
                .await
        });
        self.reading = Some((kind, claim));
    }

    pub(super) fn read_done(&mut self, joined: Result<ReadResult, tokio::task::JoinError>) {
        let Some((kind, claim)) = self.reading.take() else {
            return;
        };
        let saved = std::mem::take(&mut self.saved_during_read);
        let saved_seqs = std::mem::take(&mut self.saved_seqs_during_read);
        let rows = match joined {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => {
                drop(claim);
                self.database_trouble(&error);
                return;
            }
            Err(error) => {
                drop(claim);
                tracing::error!(%error, "read task failed");
                self.read_blocked_until = Instant::now() + self.db_backoff.next_delay();
                return;
            }
        };
        self.ctx.health.set_database_up(true, "");
        self.db_backoff.reset();
        let now = Instant::now();
        let limit = self.config.batch_size;
        let full = rows.len() == limit;
        let last = rows.last().map(|r| r.event.seq);
        let until = self.rescan.map_or(i64::MAX, |r| r.until);
        let mut added = Vec::new();
        let mut gaps: u64 = 0;
        let mut left: u64 = 0;
        for ReadRow {
            event,
            due_in,
            prev_seq,
        } in rows
        {
            if kind == ReadKind::Rescan && event.seq > until {
                break; // the main read's part
            }
            if saved.contains(&event.id) || !self.owns(event.bucket) {
                continue;
            }
            if self.schedule.knows(&event.id) {
                self.schedule
                    .update_due(&event.aggregate_id, event.id, due_in, now);
                continue;
            }
            // A bucket just acquired: the rescan that releases it reads it in seq order.
            if kind == ReadKind::Main && self.held_back.contains(&event.bucket) {
                continue;
            }
            // Its predecessor is pending but not held: its aggregate is parked and this is
            // its tail, left in the table until the head is through; or it committed after
            // an earlier read passed its seq (or was replayed). Taking this event now could
            // publish it first; leave it to the rescan, which reads both in seq order.
            if let Some(prev) = prev_seq
                && !self.schedule.holds_seq(prev)
                && !saved_seqs.contains(&prev)
            {
                if self.schedule.leaves_in_table(&event.aggregate_id, prev) {
                    left += 1;
                } else {
                    gaps += 1;
                }
                continue;
            }
            let bucket = event.bucket;
            match self.schedule.add(event, due_in, now) {
                Added::Held => added.push(bucket),
                Added::LeftInTable => left += 1,
                Added::Known => {}
            }
        }
        tracing::trace!(?kind, read = last, added = added.len(), gaps, left, "read");
        let held = i64::try_from(self.schedule.held()).unwrap_or(i64::MAX);
        if held > self.ctx.metrics.events_in_memory_peak.get() {
            self.ctx.metrics.events_in_memory_peak.set(held);
        }
        if left > 0 {
            self.ctx.metrics.read_parked_left.inc_by(left);
        }
        if gaps > 0 {
            self.ctx.metrics.read_gaps.inc_by(gaps);
            tracing::debug!(gaps, "events behind an unread predecessor; rescanning");
            self.request_rescan(0);
        }
        claim.claimed(added.iter().copied());
        match kind {
            ReadKind::Main => {
                if let Some(last) = last {
                    self.cursor = self.cursor.max(last);
                }
                // The rescan that releases held-back buckets reads what this read left of
                // theirs.
                if let Some(rescan) = self.rescan.as_mut()
                    && rescan.releases
                {
                    rescan.until = rescan.until.max(self.cursor);
                }
                // Woken by a notification but nothing new after the cursor: what woke us lies
                // behind it (a replay, a late commit).
                if std::mem::take(&mut self.woken) && added.is_empty() {
                    self.request_rescan(0);
                }
                self.caught_up = !full;
                if !added.is_empty() {
                    self.last_work = now;
                }
            }
            ReadKind::Rescan => {
                if !added.is_empty() {
                    tracing::debug!(found = added.len(), "rescan found rows behind the cursor");
                }
                if let Some(rescan) = self.rescan.as_mut() {
                    match last {
                        Some(last) if full && last < rescan.until => rescan.position = last,
                        _ => {
                            if rescan.releases {
                                self.held_back.clear();
                            }
                            self.rescan = None;
                        }
                    }
                }
            }
        }
    }

    pub(super) fn database_trouble(&mut self, error: &StoreError) {
        if error.is_connection() {
            self.ctx.health.set_database_up(false, &error.to_string());
        } else {
            tracing::error!(%error, "database statement failed");
        }
        self.read_blocked_until = Instant::now() + self.db_backoff.next_delay();
    }
}
