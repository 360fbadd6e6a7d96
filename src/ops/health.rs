//! Shared health state: written by the pipeline, read by `/healthz`, `/readyz` and the
//! metrics gauges. State changes are logged here, once per change.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::metrics::Metrics;

/// Connection and progress state of one relay.
pub struct Health {
    database_up: AtomicBool,
    /// A database state was reported at least once (the first "down" is logged too).
    database_known: AtomicBool,
    broker_up: AtomicBool,
    /// A broker state was reported at least once (the first "unavailable" is logged too).
    broker_known: AtomicBool,
    /// Milliseconds since `epoch` of the last sign of progress (a settled batch or an empty
    /// claim): the liveness probe fails when this is old while work is waiting.
    last_progress_ms: AtomicU64,
    /// Set by the gauge refresher: the oldest eligible event's age in ms (0 = none).
    oldest_eligible_ms: AtomicU64,
    /// Milliseconds since `epoch` when the broker last went from usable to not (0 while it
    /// is usable; the start counts as "down since" until the first connect).
    broker_down_since_ms: AtomicU64,
    epoch: Instant,
    wedged_after: Duration,
    metrics: Arc<Metrics>,
    /// Why the database and the broker are down (empty while up), for `/readyz`.
    causes: Mutex<Causes>,
}

#[derive(Default)]
struct Causes {
    database: String,
    broker: String,
}

impl Health {
    /// Starts "down" for both until the relay has connected.
    pub fn new(metrics: Arc<Metrics>, wedged_after: Duration) -> Self {
        Self {
            database_up: AtomicBool::new(false),
            database_known: AtomicBool::new(false),
            broker_up: AtomicBool::new(false),
            broker_known: AtomicBool::new(false),
            last_progress_ms: AtomicU64::new(0),
            oldest_eligible_ms: AtomicU64::new(0),
            broker_down_since_ms: AtomicU64::new(1),
            epoch: Instant::now(),
            wedged_after,
            metrics,
            causes: Mutex::new(Causes {
                database: "not connected yet".into(),
                broker: "not connected yet".into(),
            }),
        }
    }

    fn causes(&self) -> std::sync::MutexGuard<'_, Causes> {
        self.causes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Why the relay is not ready, in an operator's words (`None` when ready).
    pub fn not_ready_reason(&self) -> Option<String> {
        let causes = self.causes();
        let mut reasons = Vec::new();
        if !self.database_up.load(Ordering::SeqCst) {
            reasons.push(format!("database unavailable: {}", causes.database));
        }
        if !self.broker_up.load(Ordering::SeqCst) {
            reasons.push(format!("broker unavailable: {}", causes.broker));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Records the database state; logs only on change.
    pub fn set_database_up(&self, up: bool, detail: &str) {
        self.metrics.database_up.set(i64::from(up));
        self.causes().database = detail.to_owned();
        let was = self.database_up.swap(up, Ordering::SeqCst);
        let known = self.database_known.swap(true, Ordering::SeqCst);
        if was != up || !known {
            if up {
                tracing::info!("database reachable");
            } else {
                tracing::warn!(
                    error = detail,
                    "database unreachable; reconnecting with backoff"
                );
            }
        }
    }

    /// Records the broker state; logs only on change.
    pub fn set_broker_up(&self, up: bool, detail: &str) {
        self.metrics.broker_up.set(i64::from(up));
        self.causes().broker = detail.to_owned();
        if up {
            self.broker_down_since_ms.store(0, Ordering::SeqCst);
        } else {
            // The earliest moment of this outage (0 means "up"; 1 ms is the start).
            let now = (self.epoch.elapsed().as_millis() as u64).max(1);
            let _ = self.broker_down_since_ms.compare_exchange(
                0,
                now,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        let was = self.broker_up.swap(up, Ordering::SeqCst);
        let known = self.broker_known.swap(true, Ordering::SeqCst);
        if was != up || !known {
            if up {
                tracing::info!("broker connected; publishing");
            } else {
                tracing::warn!(
                    error = detail,
                    "broker unavailable; publishing paused, reconnecting with backoff"
                );
            }
        }
    }

    /// Both connections are usable.
    pub fn ready(&self) -> bool {
        self.database_up.load(Ordering::SeqCst) && self.broker_up.load(Ordering::SeqCst)
    }

    /// Whether Postgres answers.
    pub fn database_up(&self) -> bool {
        self.database_up.load(Ordering::SeqCst)
    }

    /// The broker is usable.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::SeqCst)
    }

    /// How long the broker has been unusable (since start-up if it never connected); `None`
    /// while it is usable.
    pub fn broker_down_for(&self) -> Option<Duration> {
        match self.broker_down_since_ms.load(Ordering::SeqCst) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since)),
            ),
        }
    }

    /// The pipeline made progress now.
    pub fn progress(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_progress_ms.store(now, Ordering::SeqCst);
    }

    /// The gauge refresher's view of the oldest eligible event.
    pub fn set_oldest_eligible(&self, age: Option<Duration>) {
        let ms = age.map(|a| a.as_millis().max(1) as u64).unwrap_or(0);
        self.oldest_eligible_ms.store(ms, Ordering::SeqCst);
    }

    /// Wedged: connected, eligible work older than `wedged_after`, and no progress for as
    /// long. A restart may help then; it cannot help while a dependency is down.
    pub fn wedged(&self) -> bool {
        if !self.ready() {
            return false;
        }
        let limit = self.wedged_after.as_millis() as u64;
        let oldest = self.oldest_eligible_ms.load(Ordering::SeqCst);
        let since_progress =
            self.epoch.elapsed().as_millis() as u64 - self.last_progress_ms.load(Ordering::SeqCst);
        oldest > limit && since_progress > limit
    }
}
