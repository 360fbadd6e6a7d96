//! The pipeline loop: read the backlog in `seq` order, order per aggregate in memory, publish
//! through one continuous confirm window, save outcomes in batched statements; plus the broker
//! circuit breaker, database backoff, the idle/wake-up protocol and the drain on shutdown.
//!
//! **Reads.** One read at a time, an index-ordered walk after a cursor
//! ([`crate::store::Store::read_pending`]): O(batch) per read whatever the backlog size, up to
//! `relay.max_pending_in_memory` events held (rescans and takeovers included). An aggregate
//! whose head is retrying holds one event; its tail stays in the table until the head is
//! through. Events whose aggregate already has one in flight
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
//! **Takeover.** The main read leaves buckets just acquired to a rescan from 0 until it has
//! caught up with the cursor, so their earlier events are read (and go) first.
//!
//! **Window.** Up to `relay.max_in_flight` events are at the broker at once, in up to
//! `relay.publish_channels` publish calls (each on its own confirm channel, so returns are
//! attributed exactly); a call is started the moment a slot frees, with whatever is ready.
//! An aggregate's next event is ready as soon as its predecessor's call reports.
//!
//! Submodules, one step of the loop each: `ownership` follows the coordinator's buckets,
//! `read` runs the reads and rescans, `publish` keeps the confirm window full, `settle` saves
//! outcomes, `idle` runs the idle/wake-up protocol, `shutdown` drains on shutdown. This file
//! holds the pipeline's state and the loop that drives them.

mod idle;
mod ownership;
mod publish;
mod read;
mod settle;
mod shutdown;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::{
    idle::Idle,
    publish::CallContents,
    read::{ReadKind, ReadResult, Rescan},
};
use super::{
    batch::{BatchContext, CallReport, Outcomes},
    coordinator::{Claim, InFlight, Ownership},
    scheduler::Scheduler,
    wakeup::Wakeup,
};
use crate::{
    backoff::ReconnectBackoff,
    broker::{PublishError, Publisher},
    config::RelayConfig,
};

pub use shutdown::ShutdownBudget;

/// Which buckets this replica may publish, kept current by the coordinator.
pub type Buckets = tokio::sync::watch::Receiver<Ownership>;

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
    last_main_read: Instant,
    /// The kind of the last read started (the two kinds take turns).
    last_read: ReadKind,
    /// No read before this (the database failed; backoff).
    read_blocked_until: Instant,
    rescan: Option<Rescan>,
    last_rescan: Instant,
    /// A rescan is wanted now, not at the next interval, from this `seq` (exclusive): a read
    /// found an event whose predecessor it does not hold (from 0), or parked aggregates
    /// unparked and their tails are to be read again (from their heads).
    rescan_soon: Option<i64>,
    /// Buckets just acquired: the main read leaves their rows to the releasing rescan (so
    /// their earlier rows, before the cursor, are read first).
    held_back: HashSet<i32>,
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
    /// Their `seq`s: an event read with one of them as its predecessor is not behind a gap.
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
            last_main_read: now,
            last_read: ReadKind::Rescan,
            read_blocked_until: now,
            rescan: None,
            last_rescan: now,
            rescan_soon: None,
            held_back: HashSet::new(),
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
            if let Some(after) = self.schedule.take_reread() {
                self.request_rescan(after);
            }
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
            self.ctx
                .metrics
                .events_in_memory
                .set(i64::try_from(self.schedule.held()).unwrap_or(i64::MAX));
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
                    reading = ?self.reading.as_ref().map(|(kind, _)| *kind),
                    rescan = self.rescan.is_some(),
                    caught_up = self.caught_up,
                    read_due = self.read_due,
                    owns = self.buckets.borrow().usable(),
                    blocked_ms = self
                        .read_blocked_until
                        .saturating_duration_since(Instant::now())
                        .as_millis() as u64,
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
            consider(self.last_main_read + self.config.linger_poll_interval);
        }
        if self.read_blocked_until > Instant::now() {
            consider(self.read_blocked_until);
        }
        if self.cursor > 0 && self.rescan.is_none() {
            consider(self.last_rescan + self.config.rescan_interval);
        }
        at
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
