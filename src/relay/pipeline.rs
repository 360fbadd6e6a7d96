//! The pipeline loop: claim -> publish -> settle, with up to `relay.max_inflight_batches`
//! batches in flight (the next batch is claimed while the broker confirms the last), the
//! broker circuit breaker, database reconnects, the idle/wake-up protocol, and the drain on
//! shutdown.
//!
//! The claim cursor: while batches are in flight, claims only look after the highest `seq`
//! claimed, and every pending row at or before it blocks its aggregate. Rows at or before the
//! cursor that are not in flight (committed after a later `seq` was claimed, retries that
//! came due, replayed events, buckets just acquired) are found by a full scan, which needs an
//! empty pipeline: it happens whenever the pipeline runs dry, and otherwise at least every
//! `relay.poll_interval` and right after new buckets were acquired (claiming pauses until the
//! batches in flight are settled).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    batch::{self, BatchContext, BatchReport},
    coordinator::{InFlight, Ownership},
    policy::ReconnectBackoff,
    wakeup::Wakeup,
};
use crate::{
    broker::{PublishError, Publisher},
    config::{RelayConfig, RelayMode},
    store::StoreError,
};

/// Which buckets this replica may claim, kept current by the coordinator.
pub type Buckets = tokio::sync::watch::Receiver<Ownership>;

/// Where the loop is in the idle protocol (notify mode only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// Working, or lingering after work (polling fast, producers do not notify).
    Awake,
    /// Announced sleep; producers that may have missed it are not yet known to be done.
    Announced,
    /// Announced and verified: every later commit either notifies or was seen by a claim.
    Asleep,
}

/// The claim loop. Owns the claim cursor and the in-flight batch tasks.
pub struct Pipeline<P: Publisher> {
    ctx: Arc<BatchContext<P>>,
    config: RelayConfig,
    wakeup: Wakeup,
    buckets: Buckets,
    /// In-flight events per bucket, shared with the coordinator.
    in_flight: InFlight,
    /// Highest `seq` claimed since the in-flight set was last empty: later claims only look
    /// after it, and anything pending at or before it blocks its aggregate (0 = full scan).
    cursor: i64,
    /// When the cursor was last reset (a full scan), and the buckets owned then.
    last_full_scan: Instant,
    scanned: Vec<i32>,
    tasks: JoinSet<BatchReport>,
    /// The buckets of each running batch task's events, released from `in_flight` when the
    /// task ends (also if it panicked).
    task_buckets: HashMap<Id, Vec<i32>>,
    idle: Idle,
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
        Self {
            ctx,
            config,
            wakeup,
            buckets,
            in_flight,
            cursor: 0,
            last_full_scan: Instant::now(),
            scanned: Vec::new(),
            tasks: JoinSet::new(),
            task_buckets: HashMap::new(),
            idle: Idle::Awake,
            last_work: Instant::now(),
            db_backoff: ReconnectBackoff::new(),
        }
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight batches (bounded by the
    /// [`ShutdownBudget`] of `relay.shutdown_timeout`; the abandon token is cancelled when it
    /// passes). Every wait on the database or the broker also ends on shutdown, so a server
    /// that stopped answering cannot hold the drain up.
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
                self.wait_for_tasks(&shutdown).await;
                self.connect_broker(&shutdown).await;
                continue;
            }
            let filled = tokio::select! {
                filled = self.fill() => filled,
                _ = shutdown.cancelled() => break,
            };
            let claimed = match filled {
                Ok(claimed) => claimed,
                Err(error) => {
                    self.database_trouble(&error, &shutdown).await;
                    continue;
                }
            };
            if claimed > 0 || !self.tasks.is_empty() {
                if claimed > 0 {
                    self.last_work = Instant::now();
                    if self.idle != Idle::Awake {
                        tokio::select! {
                            _ = self.set_awake() => {}
                            _ = shutdown.cancelled() => break,
                        }
                    }
                }
                if self.tasks.is_empty() {
                    continue;
                }
                tokio::select! {
                    Some(joined) = self.tasks.join_next_with_id() => self.finished(joined),
                    _ = self.wakeup.notified() => {}
                    _ = self.buckets.changed() => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            self.ctx.health.progress();
            tokio::select! {
                _ = self.idle_wait(&shutdown) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.drain().await;
    }

    /// Claims batches until the in-flight limit is reached or nothing is eligible; returns the
    /// number of events claimed.
    async fn fill(&mut self) -> Result<usize, StoreError> {
        let mut claimed = 0;
        while self.tasks.len() < self.config.max_inflight_batches {
            // Registers the claim with the coordinator, which does not hand a bucket over
            // while a claim over it runs or its events are in flight.
            let (ownership, claim) = self.in_flight.begin_claim(&mut self.buckets);
            if !ownership.usable() {
                // No buckets (yet), or the lease expired: claim nothing.
                break;
            }
            if self.tasks.is_empty() {
                // Nothing in flight: look at every pending row again.
                self.cursor = 0;
                self.last_full_scan = Instant::now();
                self.scanned.clone_from(&ownership.buckets);
            } else if self.full_scan_due(&ownership.buckets) {
                // Let the batches in flight settle, then claim with the cursor reset.
                break;
            }
            let batch = self
                .ctx
                .store
                .claim(
                    self.cursor,
                    self.config.batch_size,
                    Some((ownership.buckets.as_slice(), ownership.count)),
                )
                .await?;
            claim.claimed(batch.iter().map(|e| e.bucket));
            self.ctx.health.set_database_up(true, "");
            self.db_backoff.reset();
            if batch.is_empty() {
                break;
            }
            let full = batch.len() == self.config.batch_size;
            claimed += batch.len();
            if let Some(last) = batch.last() {
                self.cursor = self.cursor.max(last.seq);
            }
            let buckets: Vec<i32> = batch.iter().map(|e| e.bucket).collect();
            let ctx = self.ctx.clone();
            let task = self.tasks.spawn(batch::process(ctx, batch));
            self.task_buckets.insert(task.id(), buckets);
            if !full {
                break;
            }
        }
        Ok(claimed)
    }

    /// Rows at or before the cursor that are not in flight wait for a full scan: due after
    /// `relay.poll_interval`, or at once when buckets were acquired since the last one.
    fn full_scan_due(&self, owned: &[i32]) -> bool {
        self.last_full_scan.elapsed() >= self.config.poll_interval
            || owned.iter().any(|b| self.scanned.binary_search(b).is_err())
    }

    fn finished(&mut self, joined: Result<(Id, BatchReport), tokio::task::JoinError>) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        if let Some(buckets) = self.task_buckets.remove(&id) {
            self.in_flight.settled(&buckets);
        }
        match joined {
            Ok((_, report)) => {
                if let Some(error) = report.broker_down {
                    self.ctx.health.set_broker_up(false, &error.to_string());
                }
            }
            Err(error) => {
                // A panicked batch task: its events stay pending, block their aggregates
                // (they lie before the cursor) and are claimed again by the next full scan.
                tracing::error!(%error, "batch task failed");
            }
        }
    }

    /// Waits for the batches in flight (until shutdown: then the drain takes over).
    async fn wait_for_tasks(&mut self, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                joined = self.tasks.join_next_with_id() => match joined {
                    Some(joined) => self.finished(joined),
                    None => return,
                },
                _ = shutdown.cancelled() => return,
            }
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

    async fn database_trouble(&mut self, error: &StoreError, shutdown: &CancellationToken) {
        if error.is_connection() {
            self.ctx.health.set_database_up(false, &error.to_string());
        } else {
            tracing::error!(%error, "claim failed");
        }
        let delay = self.db_backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // LISTEN re-established: the database is back, retry now rather than after a
            // backoff that may have grown to 30 s.
            _ = self.wakeup.notified() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Nothing to claim and nothing in flight: linger, announce sleep, or sleep.
    async fn idle_wait(&mut self, shutdown: &CancellationToken) {
        let wait = match (self.config.mode, self.idle) {
            (RelayMode::Poll, _) => self.config.poll_interval,
            (RelayMode::Notify, Idle::Awake) => {
                if self.last_work.elapsed() < self.config.linger {
                    self.config.linger_poll_interval
                } else {
                    match self.ctx.store.announce_sleep().await {
                        Ok(_) => self.idle = Idle::Announced,
                        Err(error) => tracing::debug!(%error, "announce sleep failed"),
                    }
                    // Re-check for work committed before the announcement.
                    return;
                }
            }
            (RelayMode::Notify, Idle::Announced) => match self.ctx.store.producers_quiet().await {
                Ok(true) => {
                    self.idle = Idle::Asleep;
                    // One more claim: everything committed so far is visible now.
                    return;
                }
                // A producer that may have missed the announcement has not committed yet.
                Ok(false) => self.config.linger_poll_interval,
                Err(_) => self.config.linger_poll_interval,
            },
            (RelayMode::Notify, Idle::Asleep) => self.config.poll_interval,
        };
        self.sleep(wait, shutdown).await;
    }

    async fn sleep(&mut self, wait: Duration, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.wakeup.notified() => {}
            // New buckets (or a lost lease) change what there is to claim.
            _ = self.buckets.changed() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    async fn set_awake(&mut self) {
        match self.ctx.store.announce_wake().await {
            Ok(()) => self.idle = Idle::Awake,
            Err(error) => tracing::debug!(%error, "announce wake failed"),
        }
    }

    /// Stop claiming; let in-flight batches finish and settle within the shutdown timeout.
    async fn drain(mut self) {
        let budget = ShutdownBudget::new(self.config.shutdown_timeout);
        let in_flight = self.tasks.len();
        if in_flight > 0 {
            tracing::info!(batches = in_flight, "draining in-flight batches");
        }
        let deadline = tokio::time::sleep(budget.drain);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = self.tasks.join_next_with_id() => match joined {
                    Some(joined) => self.finished(joined),
                    None => break,
                },
                _ = &mut deadline => {
                    tracing::error!(
                        batches = self.tasks.len(),
                        "shutdown timeout reached with batches unsettled; aborting them"
                    );
                    self.ctx.abandon.cancel();
                    // Settle loops return promptly once abandoned; a publish stuck waiting for
                    // confirms is aborted (its events stay pending and are published again).
                    let grace = tokio::time::timeout(budget.step, async {
                        while let Some(joined) = self.tasks.join_next_with_id().await {
                            self.finished(joined);
                        }
                    });
                    if grace.await.is_err() {
                        self.tasks.abort_all();
                    }
                    break;
                }
            }
        }
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
