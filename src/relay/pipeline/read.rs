//! Reading the backlog: the main read after the cursor and the rescans before it, one read at
//! a time, the ordering checks on what a read returns, and the database backoff after a
//! failed read.

use std::time::Instant;

use super::Pipeline;
use crate::{
    broker::Publisher,
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
    /// Held-back buckets may go once it is done.
    pub(super) releases: bool,
}

pub(super) type ReadResult = Result<Vec<ReadRow>, StoreError>;

impl<P: Publisher> Pipeline<P> {
    pub(super) fn start_rescan_when_due(&mut self, now: Instant) {
        if self.rescan.is_none()
            && self.cursor > 0
            && (self.rescan_soon
                || now.duration_since(self.last_rescan) >= self.config.rescan_interval)
        {
            self.rescan_soon = false;
            self.rescan = Some(Rescan {
                position: 0,
                until: self.cursor,
                releases: false,
            });
            self.last_rescan = now;
        }
    }

    pub(super) fn wanted_read(&self, now: Instant) -> Option<ReadKind> {
        if self.reading.is_some()
            || self.ctx.shutdown.is_cancelled()
            || now < self.read_blocked_until
            || !self.buckets.borrow().usable()
        {
            return None;
        }
        let room =
            self.schedule.held() + self.config.batch_size <= self.config.max_pending_in_memory;
        let main = room && (!self.caught_up || self.read_due);
        match (main, self.rescan.is_some()) {
            // Alternate while both want to read.
            (true, true) if self.caught_up => Some(ReadKind::Rescan),
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
            self.last_read = Instant::now();
        }
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
            // Its predecessor is pending but not held: it committed after an earlier read
            // passed its seq (or was replayed). Taking this event now could publish it first;
            // leave it to the rescan, which reads both in seq order.
            if let Some(prev) = prev_seq
                && !self.schedule.holds_seq(prev)
                && !saved_seqs.contains(&prev)
            {
                gaps += 1;
                continue;
            }
            let bucket = event.bucket;
            if self.schedule.add(event, due_in, now) {
                added.push(bucket);
            }
        }
        tracing::trace!(?kind, read = last, added = added.len(), gaps, "read");
        if gaps > 0 {
            self.ctx.metrics.read_gaps.inc_by(gaps);
            tracing::debug!(gaps, "events behind an unread predecessor; rescanning");
            self.rescan_soon = true;
        }
        claim.claimed(added.iter().copied());
        match kind {
            ReadKind::Main => {
                if let Some(last) = last {
                    self.cursor = self.cursor.max(last);
                }
                // Woken by a notification but nothing new after the cursor: what woke us lies
                // behind it (a replay, a late commit).
                if std::mem::take(&mut self.woken) && added.is_empty() {
                    self.rescan_soon = true;
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
                                self.schedule.release_buckets(now);
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
