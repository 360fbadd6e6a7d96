//! The gauge refresher: every `metrics.refresh_interval`, one query over pending and dead
//! rows ([`status::backlog`]) sets the backlog and age gauges, so a scrape storm never touches
//! the table, and tells the health state how long the oldest eligible event has been waiting
//! (the input of the wedged check behind `/healthz`).
//!
//! A failed refresh is logged at debug (a lost database is reported once by the relay's
//! health state) and keeps the previous values until the next tick succeeds.

use std::{collections::HashSet, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::{
    health::Health,
    metrics::{AggregateTypeLabel, Metrics},
};
use crate::store::{StoreError, TableName, status};

/// Refreshes the table-derived gauges until `shutdown` (first refresh at start-up).
pub async fn refresh_loop(
    pool: Pool,
    table: TableName,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let backlog = tokio::select! {
            backlog = read_backlog(&pool, &table) => backlog,
            _ = shutdown.cancelled() => return,
        };
        match backlog {
            Ok(backlog) => {
                apply(&metrics, &backlog, &mut seen);
                health.set_oldest_eligible(
                    backlog
                        .oldest_eligible_age_seconds
                        .map(Duration::from_secs_f64),
                );
            }
            Err(error) => tracing::debug!(%error, "gauge refresh failed; keeping old values"),
        }
    }
}

async fn read_backlog(pool: &Pool, table: &TableName) -> Result<status::Backlog, StoreError> {
    let client = pool.get().await?;
    status::backlog(&**client, table).await
}

/// Sets the gauges from a backlog snapshot. `seen` holds the aggregate types set last time:
/// types no longer present (all their events dispatched or replayed) drop to 0 rather than
/// keep their last value.
pub fn apply(metrics: &Metrics, backlog: &status::Backlog, seen: &mut HashSet<String>) {
    for gone in seen
        .iter()
        .filter(|t| !backlog.by_aggregate_type.contains_key(*t))
    {
        let label = AggregateTypeLabel {
            aggregate_type: gone.clone(),
        };
        metrics.pending.get_or_create(&label).set(0);
        metrics.dead_events.get_or_create(&label).set(0);
    }
    seen.clear();
    for (aggregate_type, entry) in &backlog.by_aggregate_type {
        let label = AggregateTypeLabel {
            aggregate_type: aggregate_type.clone(),
        };
        metrics.pending.get_or_create(&label).set(entry.pending);
        metrics.dead_events.get_or_create(&label).set(entry.dead);
        seen.insert(aggregate_type.clone());
    }
    metrics
        .oldest_pending_age
        .set(backlog.oldest_pending_age_seconds.unwrap_or(0.0));
    metrics
        .oldest_eligible_age
        .set(backlog.oldest_eligible_age_seconds.unwrap_or(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status::{Backlog, TypeBacklog};

    fn backlog(types: &[(&str, i64, i64)]) -> Backlog {
        let mut backlog = Backlog::default();
        for (name, pending, dead) in types {
            backlog.by_aggregate_type.insert(
                (*name).to_owned(),
                TypeBacklog {
                    pending: *pending,
                    dead: *dead,
                    ..TypeBacklog::default()
                },
            );
        }
        backlog
    }

    #[test]
    fn aggregate_types_that_disappear_drop_to_zero() {
        // GIVEN gauges set for two aggregate types
        let metrics = Metrics::new();
        let mut seen = HashSet::new();
        apply(
            &metrics,
            &backlog(&[("order", 3, 1), ("invoice", 2, 0)]),
            &mut seen,
        );
        let text = metrics.render();
        assert!(text.contains("outbox_pending_events{aggregate_type=\"order\"} 3"));
        assert!(text.contains("outbox_dead_events{aggregate_type=\"order\"} 1"));

        // WHEN the next snapshot has only invoices
        apply(&metrics, &backlog(&[("invoice", 5, 0)]), &mut seen);

        // THEN the order gauges read 0 instead of their last value
        let text = metrics.render();
        assert!(
            text.contains("outbox_pending_events{aggregate_type=\"order\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("outbox_dead_events{aggregate_type=\"order\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("outbox_pending_events{aggregate_type=\"invoice\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn ages_of_nothing_read_zero() {
        let metrics = Metrics::new();
        let mut seen = HashSet::new();
        let mut snapshot = backlog(&[("order", 1, 0)]);
        snapshot.oldest_pending_age_seconds = Some(42.0);
        snapshot.oldest_eligible_age_seconds = None;
        apply(&metrics, &snapshot, &mut seen);
        let text = metrics.render();
        assert!(
            text.contains("outbox_oldest_pending_age_seconds 42.0"),
            "{text}"
        );
        assert!(
            text.contains("outbox_oldest_eligible_age_seconds 0.0"),
            "{text}"
        );
    }
}
