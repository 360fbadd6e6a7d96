//! The gauge refresher: every `metrics.refresh_interval`, one query over the oldest pending and
//! dead rows ([`status::backlog`], at most [`status::WINDOW`] of each, whatever the table
//! retains or the backlog's depth) sets the backlog and age gauges, so a scrape storm never touches
//! the table, and tells the health state how long the oldest eligible event has been waiting
//! (the input of the wedged check behind `/healthz`).
//!
//! With the status page on (`metrics.status_page`), the same tick reads the full status
//! (the backlog plus failure reasons, the next retry and the retained dispatched count; with
//! `details` also the ten latest dead events) into the [`Snapshot`] the page serves.
//!
//! A failed refresh is logged at debug (a lost database is reported once by the relay's
//! health state) and keeps the previous values until the next tick succeeds.

use std::{collections::HashSet, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::{
    health::Health,
    metrics::{AggregateTypeLabel, Metrics},
    snapshot::Snapshot,
};
use crate::{
    config::StatusPage,
    config::TableName,
    store::{self, StoreError, admin, status},
};

/// Dead events on the `details` page.
const LATEST_DEAD: i64 = 10;

/// Refreshes the table-derived gauges until `shutdown` (first refresh at start-up).
pub async fn refresh_loop(
    pool: Pool,
    table: TableName,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    snapshot: Arc<Snapshot>,
    deadline: Option<Duration>,
    shutdown: CancellationToken,
) {
    let interval = snapshot.refresh;
    let mut seen: HashSet<String> = HashSet::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let backlog = tokio::select! {
            backlog = read(&pool, &table, (&metrics, &health, &snapshot), deadline) => backlog,
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
            Err(error) => {
                tracing::debug!(%error, "gauge refresh failed; keeping old values");
                snapshot.update_view(&metrics, &health);
            }
        }
    }
}

/// The backlog; with the page on, the full status too, stored in `snapshot`. Bounded by
/// `deadline`: a connection that stops answering is replaced (see [`store::after_deadline`]).
async fn read(
    pool: &Pool,
    table: &TableName,
    (metrics, health, snapshot): (&Metrics, &Health, &Snapshot),
    deadline: Option<Duration>,
) -> Result<status::Backlog, StoreError> {
    let client = pool.get().await?;
    let result = store::within(deadline, async {
        if snapshot.page == StatusPage::Off {
            return status::backlog(&client, table).await;
        }
        let full = status::status(&client, table).await?;
        let dead = match snapshot.page {
            StatusPage::Details => {
                Some(admin::latest_dead_events(&**client, table, LATEST_DEAD).await?)
            }
            _ => None,
        };
        let backlog = full.backlog.clone();
        snapshot.update(full, dead, metrics, health);
        Ok(backlog)
    })
    .await;
    store::after_deadline(pool, client, &result);
    result
}

/// Sets the gauges from a backlog snapshot. `seen` holds the aggregate types set last time:
/// types no longer present (all their events dispatched or replayed) drop to 0 rather than
/// keep their last value. Once a type is known, its series stay, so the placeholder series
/// ([`Metrics::set_placeholder`]) is no longer needed for sums to read 0.
pub fn apply(metrics: &Metrics, backlog: &status::Backlog, seen: &mut HashSet<String>) {
    for gone in seen
        .iter()
        .filter(|t| !backlog.by_aggregate_type.contains_key(*t))
    {
        set_type(metrics, gone, &status::TypeBacklog::default());
    }
    seen.clear();
    if !backlog.by_aggregate_type.is_empty() {
        metrics.set_placeholder(false);
    }
    for (aggregate_type, entry) in &backlog.by_aggregate_type {
        set_type(metrics, aggregate_type, entry);
        seen.insert(aggregate_type.clone());
    }
    metrics
        .oldest_pending_age
        .set(backlog.oldest_pending_age_seconds.unwrap_or(0.0));
    metrics.backlog_estimated.set(i64::from(backlog.estimated));
    metrics
        .oldest_eligible_age
        .set(backlog.oldest_eligible_age_seconds.unwrap_or(0.0));
}

fn set_type(metrics: &Metrics, aggregate_type: &str, entry: &status::TypeBacklog) {
    let label = AggregateTypeLabel {
        aggregate_type: aggregate_type.to_owned(),
    };
    metrics.pending.get_or_create(&label).set(entry.pending);
    metrics.dead_events.get_or_create(&label).set(entry.dead);
    metrics
        .oldest_pending_age_by_type
        .get_or_create(&label)
        .set(entry.oldest_pending_age_seconds.unwrap_or(0.0));
    metrics
        .oldest_eligible_age_by_type
        .get_or_create(&label)
        .set(entry.oldest_eligible_age_seconds.unwrap_or(0.0));
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
    fn an_empty_outbox_exports_zero_until_a_type_appears() {
        // GIVEN a fresh registry: one placeholder series per per-type gauge, at 0
        let metrics = Metrics::new();
        let text = metrics.render();
        for family in [
            "outbox_pending_events",
            "outbox_dead_events",
            "outbox_oldest_pending_age_by_type_seconds",
            "outbox_oldest_eligible_age_by_type_seconds",
        ] {
            assert!(
                text.contains(&format!("{family}{{aggregate_type=\"\"}} 0")),
                "{text}"
            );
        }
        let mut seen = HashSet::new();

        // WHEN an empty snapshot arrives, the placeholder stays
        apply(&metrics, &backlog(&[]), &mut seen);
        assert!(
            metrics
                .render()
                .contains("outbox_pending_events{aggregate_type=\"\"} 0")
        );

        // WHEN a type appears, the placeholder goes; the type stays after it empties
        apply(&metrics, &backlog(&[("order", 2, 0)]), &mut seen);
        apply(&metrics, &backlog(&[]), &mut seen);
        let text = metrics.render();
        assert!(!text.contains("aggregate_type=\"\""), "{text}");
        assert!(
            text.contains("outbox_pending_events{aggregate_type=\"order\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn ages_by_type_follow_the_snapshot() {
        let metrics = Metrics::new();
        let mut seen = HashSet::new();
        let mut snapshot = backlog(&[("order", 1, 0), ("invoice", 1, 0)]);
        if let Some(order) = snapshot.by_aggregate_type.get_mut("order") {
            order.oldest_pending_age_seconds = Some(42.0);
            order.oldest_eligible_age_seconds = Some(40.0);
        }
        apply(&metrics, &snapshot, &mut seen);
        let text = metrics.render();
        for needle in [
            "outbox_oldest_pending_age_by_type_seconds{aggregate_type=\"order\"} 42.0",
            "outbox_oldest_eligible_age_by_type_seconds{aggregate_type=\"order\"} 40.0",
            "outbox_oldest_eligible_age_by_type_seconds{aggregate_type=\"invoice\"} 0.0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
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
