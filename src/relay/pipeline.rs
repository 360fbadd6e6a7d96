//! The pipeline loop: read the backlog in `seq` order, order per aggregate in memory, publish
//! through one continuous confirm window, save outcomes in batched statements; plus the broker
//! circuit breaker, database backoff, the idle/wake-up protocol and the drain on shutdown.
//!
//! **Reads.** One read at a time, an index-ordered walk after a cursor
//! ([`crate::store::Store::read_pending`]): O(batch) per read whatever the backlog size, up to
//! `relay.max_pending_in_memory` events held. Events whose aggregate already has one in flight
//! wait in the [`Scheduler`]; pending rows that are not yet due are read too and park their
//! aggregate, so after a restart or a takeover nothing overtakes an event waiting out a backoff.
//!
//! **Why no committed row is skipped.** The cursor only passes rows the read returned, but a
//! row can commit after a read passed its `seq` (a transaction that took its `seq` earlier and
//! committed later), and a replayed or taken-over row can lie behind it. So a *rescan* walks
//! the rows before the cursor again every `relay.rescan_interval`, in batches, adding what it
//! does not hold (the cursor starts at 0 when the relay starts, so the first read is a rescan
//! of everything). A rescan's cost is the pending rows before the cursor, which are about the
//! events held in memory, not the backlog, plus the index entries of rows dispatched since
//! the last vacuum; its frequency is bounded by the interval. The cursor is *not* reset when
//! the relay runs dry: a read from 0 on every wake-up would walk every dispatched,
//! not-yet-vacuumed entry of the pending index each time, a cost that grows with the traffic.
//! A late row of an aggregate cannot break that aggregate's order: producers serialize writes
//! per aggregate (README), so its later events commit after it.
//!
//! **Takeover.** Buckets just acquired are held back until a rescan has read every row of
//! theirs before the cursor, so their earlier events go first.
//!
//! **Window.** Up to `relay.max_in_flight` events are at the broker at once, in up to
//! `relay.publish_channels` publish calls (each on its own confirm channel, so returns are
//! attributed exactly); a call is started the moment a slot frees, with whatever is ready.
//! An aggregate's next event is ready as soon as its predecessor's call reports.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    batch::{self, BatchContext, CallReport, Fate, Outcomes},
    coordinator::{Claim, InFlight, Ownership},
    scheduler::Scheduler,
    wakeup::Wakeup,
};
use crate::{
    backoff::ReconnectBackoff,
    broker::{PublishError, Publisher},
    config::{RelayConfig, RelayMode},
    store::{Failure, ReadRow, StoreError},
};

/// Which buckets this replica may publish, kept current by the coordinator.
pub type Buckets = tokio::sync::watch::Receiver<Ownership>;

/// Where the loop is in the idle protocol (notify mode only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// Working, or lingering after work (polling fast, producers do not notify).
    Awake,
    /// Announced sleep; producers that may have missed it are not yet known to be done.
    Announced,
    /// Announced and verified: every later commit either notifies or was seen by a read.
    Asleep,
}

/// Which read is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// After the cursor.
    Main,
    /// Before the cursor (a rescan).
    Rescan,
}

/// A rescan in progress: rows with `seq` in `(position, until]` are still to be read again.
#[derive(Debug, Clone, Copy)]
struct Rescan {
    position: i64,
    until: i64,
    /// Held-back buckets may go once it is done.
    releases: bool,
}

type ReadResult = Result<Vec<ReadRow>, StoreError>;

/// What a publish call carries, kept to recover if its task fails.
struct CallContents(Vec<(Uuid, String, i32)>);

/// The relay's main loop. Owns the cursor, the schedule and the tasks.
pub struct Pipeline<P: Publisher> {
    ctx: Arc<BatchContext<P>>,
    config: RelayConfig,
    wakeup: Wakeup,
    buckets: Buckets,
    /// Events held per bucket, shared with the coordinator (no hand-over while held).
    in_flight: InFlight,
    schedule: Scheduler,
    /// Highest `seq` read since the relay last held nothing.
    cursor: i64,
    /// The last read after the cursor came back short: the backlog is read to its end.
    caught_up: bool,
    /// A wake-up or a poll asks for a read even though caught up.
    read_due: bool,
    last_read: Instant,
    /// No read before this (the database failed; backoff).
    read_blocked_until: Instant,
    rescan: Option<Rescan>,
    last_rescan: Instant,
    /// A read found an event whose predecessor it does not hold: rescan now, not at the
    /// next interval.
    rescan_soon: bool,
    /// The last idle wait ended with a notification.
    woken: bool,
    /// Buckets of the last ownership seen.
    owned: Vec<i32>,
    /// The running read and its registration with the coordinator.
    reading: Option<(ReadKind, Claim)>,
    reads: JoinSet<ReadResult>,
    /// Events whose outcome was saved (and left memory) while a read ran: that read may still
    /// return them as pending, or as the predecessor of an event.
    saved_during_read: HashSet<Uuid>,
    saved_seqs_during_read: HashSet<i64>,
    calls: JoinSet<CallReport>,
    call_contents: HashMap<Id, CallContents>,
    to_save: Outcomes,
    /// Dead events whose state is being saved, with their aggregate (busy until then).
    dying: HashMap<Uuid, String>,
    settles: JoinSet<(Outcomes, bool)>,
    idle: Idle,
    /// When the pipeline's state was last logged (debug, once a second while busy).
    last_trace: Instant,
    last_work: Instant,
    db_backoff: ReconnectBackoff,
}

impl<P: Publisher> Pipeline<P> {
    /// A pipeline over `ctx`.
    pub fn new(
        ctx: Arc<BatchContext<P>>,
        config: RelayConfig,
        wakeup: Wakeup,
        buckets: Buckets,
        in_flight: InFlight,
    ) -> Self {
        let now = Instant::now();
        Self {
            ctx,
            config,
            wakeup,
            buckets,
            in_flight,
            schedule: Scheduler::new(),
            cursor: 0,
            caught_up: false,
            read_due: true,
            last_read: now,
            read_blocked_until: now,
            rescan: None,
            last_rescan: now,
            rescan_soon: false,
            woken: false,
            owned: Vec::new(),
            reading: None,
            reads: JoinSet::new(),
            saved_during_read: HashSet::new(),
            saved_seqs_during_read: HashSet::new(),
            calls: JoinSet::new(),
            call_contents: HashMap::new(),
            to_save: Outcomes::default(),
            dying: HashMap::new(),
            settles: JoinSet::new(),
            idle: Idle::Awake,
            last_trace: now,
            last_work: now,
            db_backoff: ReconnectBackoff::new(),
        }
    }

    /// Runs until `shutdown` is cancelled, then drains (bounded by the [`ShutdownBudget`] of
    /// `relay.shutdown_timeout`; the abandon token is cancelled when it passes). Every wait on
    /// the database or the broker also ends on shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.connect_broker(&shutdown).await;
        while !shutdown.is_cancelled() {
            if self.ctx.health.broker_up() && self.ctx.publisher.lost() {
                // Closed under us while idle: say so now, not at the next publish.
                self.ctx
                    .health
                    .set_broker_up(false, "the broker connection was closed");
            }
            if !self.ctx.health.broker_up() {
                if !self.calls.is_empty() {
                    self.wait_once(&shutdown, None).await;
                    continue;
                }
                self.connect_broker(&shutdown).await;
                continue;
            }
            let now = Instant::now();
            self.sync_ownership(now);
            self.schedule.wake_due(now);
            self.launch(now);
            self.flush();
            self.start_rescan_when_due(now);
            if let Some(kind) = self.wanted_read(now) {
                self.start_read(kind);
            }
            if self.idle != Idle::Awake && self.has_work_now() {
                // Found work: producers may stop notifying.
                tokio::select! {
                    _ = self.wake_up() => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            if self.is_idle() {
                self.ctx.health.progress();
                tokio::select! {
                    _ = self.idle_wait(&shutdown) => {}
                    _ = shutdown.cancelled() => break,
                }
                self.read_due = true;
                continue;
            }
            let timer = self.next_timer();
            if self.last_trace.elapsed() >= Duration::from_secs(1) {
                self.last_trace = Instant::now();
                tracing::debug!(
                    held = self.schedule.held(),
                    queued = self.schedule.queued(),
                    in_flight = self.schedule.in_flight(),
                    ready = self.schedule.ready_len(),
                    calls = self.calls.len(),
                    settles = self.settles.len(),
                    to_save = self.to_save.len(),
                    cursor = self.cursor,
                    "pipeline state"
                );
            }
            self.wait_once(&shutdown, timer).await;
        }
        self.drain().await;
    }

    /// Something to publish now or at the broker. Events that only wait out a backoff (and
    /// the events queued behind them) are not work now: they come due on a timer.
    fn has_work_now(&self) -> bool {
        self.schedule.in_flight() > 0 || self.schedule.ready_len() > 0
    }

    /// Nothing to publish now, nothing running, and the last read found the backlog's end.
    /// Events parked in a backoff may be held: a relay waiting only for them sleeps like an
    /// empty one (so producers notify it of new rows), and wakes when the first comes due.
    fn is_idle(&self) -> bool {
        !self.has_work_now()
            && self.calls.is_empty()
            && self.settles.is_empty()
            && self.reading.is_none()
            && self.to_save.is_empty()
            && self.caught_up
            && !self.read_due
            && self.rescan.is_none()
    }

    /// Waits for one thing to happen (a task reports, a timer, a wake-up, shutdown).
    async fn wait_once(&mut self, shutdown: &CancellationToken, timer: Option<Instant>) {
        let sleep = async {
            match timer {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(joined) = self.calls.join_next_with_id() => self.call_done(joined),
            Some(joined) = self.settles.join_next() => self.settle_done(joined),
            Some(joined) = self.reads.join_next() => self.read_done(joined),
            _ = sleep => {}
            _ = self.wakeup.notified() => self.read_due = true,
            _ = self.buckets.changed() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// The earliest of: a parked aggregate comes due, the next poll while caught up, the end
    /// of a database backoff, the next rescan.
    fn next_timer(&self) -> Option<Instant> {
        let mut at = self.schedule.next_due();
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if self.caught_up && !self.read_due {
            consider(self.last_read + self.config.linger_poll_interval);
        }
        if self.read_blocked_until > Instant::now() {
            consider(self.read_blocked_until);
        }
        if self.cursor > 0 && self.rescan.is_none() {
            consider(self.last_rescan + self.config.rescan_interval);
        }
        at
    }

    fn owns(&self, bucket: i32) -> bool {
        self.owned.binary_search(&bucket).is_ok()
    }

    /// Applies a change of bucket ownership: drops what is queued for lost buckets, holds
    /// back acquired ones until a rescan has read their earlier rows.
    fn sync_ownership(&mut self, now: Instant) {
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
        if !gained.is_empty() && self.cursor > 0 {
            self.schedule.hold_back(gained);
            self.rescan = Some(Rescan {
                position: 0,
                until: self.cursor,
                releases: true,
            });
            self.last_rescan = now;
        }
    }

    /// Starts publish calls while slots and window allow and events are ready.
    fn launch(&mut self, now: Instant) {
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

    fn call_done(&mut self, joined: Result<(Id, CallReport), tokio::task::JoinError>) {
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
                        self.schedule.retry(event, delay, now);
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

    /// Saves what is waiting, in one batched settle (at most two run at once).
    fn flush(&mut self) {
        if self.to_save.is_empty() || self.settles.len() >= 2 {
            return;
        }
        let outcomes = std::mem::take(&mut self.to_save);
        self.settles
            .spawn(batch::settle(self.ctx.clone(), outcomes));
    }

    fn settle_done(&mut self, joined: Result<(Outcomes, bool), tokio::task::JoinError>) {
        match joined {
            Ok((outcomes, _saved)) => {
                let now = Instant::now();
                for failure in outcomes.failures.iter().filter(|f| f.dead) {
                    if let Some(aggregate) = self.dying.remove(&failure.id) {
                        self.schedule.dead(&aggregate, now);
                    }
                }
                if self.reading.is_some() {
                    self.saved_during_read
                        .extend(outcomes.forget.iter().copied());
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

    fn start_rescan_when_due(&mut self, now: Instant) {
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

    fn wanted_read(&self, now: Instant) -> Option<ReadKind> {
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

    fn start_read(&mut self, kind: ReadKind) {
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

    fn read_done(&mut self, joined: Result<ReadResult, tokio::task::JoinError>) {
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
        let mut gaps = 0;
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

    fn database_trouble(&mut self, error: &StoreError) {
        if error.is_connection() {
            self.ctx.health.set_database_up(false, &error.to_string());
        } else {
            tracing::error!(%error, "database statement failed");
        }
        self.read_blocked_until = Instant::now() + self.db_backoff.next_delay();
    }

    /// Waits until the database backoff has passed (or shutdown).
    async fn wait_out_backoff(&self, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.read_blocked_until.into()) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Nothing held and nothing running: linger, announce sleep, or sleep.
    async fn idle_wait(&mut self, shutdown: &CancellationToken) {
        if Instant::now() < self.read_blocked_until {
            return self.wait_out_backoff(shutdown).await;
        }
        let wait = match (self.config.mode, self.idle) {
            (RelayMode::Poll, _) => self.config.poll_interval,
            (RelayMode::Notify, Idle::Awake) => {
                if self.last_work.elapsed() < self.config.linger {
                    self.config.linger_poll_interval
                } else {
                    match self.ctx.store.announce_sleep().await {
                        Ok(_) => self.idle = Idle::Announced,
                        // Back off like a failed read: returning at once would retry the
                        // database in a tight loop.
                        Err(error) => {
                            self.database_trouble(&error);
                            return self.wait_out_backoff(shutdown).await;
                        }
                    }
                    // Re-check for work committed before the announcement.
                    return;
                }
            }
            (RelayMode::Notify, Idle::Announced) => match self.ctx.store.producers_quiet().await {
                Ok(true) => {
                    self.idle = Idle::Asleep;
                    // One more read: everything committed so far is visible now.
                    return;
                }
                // A producer that may have missed the announcement has not committed yet.
                Ok(false) => self.config.linger_poll_interval,
                Err(error) => {
                    self.database_trouble(&error);
                    return self.wait_out_backoff(shutdown).await;
                }
            },
            (RelayMode::Notify, Idle::Asleep) => self.config.poll_interval,
        };
        // Rows behind the cursor are looked for at least every rescan interval, asleep too.
        let wait = if self.cursor > 0 {
            let due = self.last_rescan + self.config.rescan_interval;
            wait.min(due.saturating_duration_since(Instant::now()))
        } else {
            wait
        };
        // A parked event that comes due ends the wait.
        let wait = match self.schedule.next_due() {
            Some(due) => wait.min(due.saturating_duration_since(Instant::now())),
            None => wait,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.wakeup.notified() => self.woken = true,
            // New buckets (or a lost lease) change what there is to read.
            _ = self.buckets.changed() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Marks the relay awake after it found work (producers stop notifying).
    async fn wake_up(&mut self) {
        match self.ctx.store.announce_wake().await {
            Ok(()) => self.idle = Idle::Awake,
            Err(error) => tracing::debug!(%error, "announce wake failed"),
        }
    }

    /// Stop reading and publishing; let publish calls finish and their outcomes be saved,
    /// within the shutdown budget.
    async fn drain(mut self) {
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

    /// Reconnects the broker with backoff until it works or shutdown. Each attempt is bounded
    /// by `relay.publish_timeout` and abandoned on shutdown: a broker that accepts TCP but
    /// never answers must neither wedge the loop nor hold up the drain.
    async fn connect_broker(&mut self, shutdown: &CancellationToken) {
        let mut backoff = ReconnectBackoff::new();
        while !shutdown.is_cancelled() {
            let attempt = tokio::select! {
                result = tokio::time::timeout(
                    self.config.publish_timeout,
                    self.ctx.publisher.connect(),
                ) => result.unwrap_or_else(|_| {
                    Err(PublishError::Unavailable(
                        "no answer within relay.publish_timeout while connecting".into(),
                    ))
                }),
                _ = shutdown.cancelled() => return,
            };
            self.ctx.metrics.attempts("broker", attempt.is_ok()).inc();
            match attempt {
                Ok(()) => {
                    self.ctx.health.set_broker_up(true, "");
                    return;
                }
                Err(error) => {
                    self.ctx.health.set_broker_up(false, &error.to_string());
                    let delay = backoff.next_delay();
                    tracing::debug!(%error, ?delay, "broker connect failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
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
