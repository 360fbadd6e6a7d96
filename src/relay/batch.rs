//! Publishing and settling one claimed batch. The batch is split into *waves* holding at most
//! one event per aggregate, in `seq` order: wave N+1 is published only after wave N was
//! confirmed, and an aggregate whose event failed drops out of the later waves, so a later
//! event never reaches the broker before an earlier one of its aggregate.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    coordinator::Ownership,
    policy::{Directive, ReconnectBackoff, RetryPolicy},
};
use crate::{
    broker::{PublishError, Publisher},
    ops::{
        health::Health,
        metrics::{DestinationLabel, Metrics, ReasonLabel},
    },
    store::{Failure, OutboxEvent, Store},
};

/// What the pipeline needs to know after a batch.
#[derive(Debug)]
pub struct BatchReport {
    /// Every aggregate of the batch (to release from the busy set).
    pub aggregates: Vec<String>,
    /// The bucket of every event of the batch (to release from the in-flight count).
    pub buckets: Vec<i32>,
    /// The broker was unavailable (pause publishing).
    pub broker_down: Option<PublishError>,
    /// Events confirmed.
    pub confirmed: usize,
}

/// Shared dependencies of batch tasks.
pub struct BatchContext<P> {
    /// The outbox.
    pub store: Store,
    /// The broker.
    pub publisher: Arc<P>,
    /// Retry/dead decisions.
    pub policy: RetryPolicy,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health state.
    pub health: Arc<Health>,
    /// Cancelled on shutdown: no new waves start, but settling goes on.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain deadline passed: give up settling.
    pub abandon: CancellationToken,
    /// The replica's bucket lease: no new wave starts once it has lapsed or was revoked (the
    /// buckets may belong to another replica by now); unpublished events stay pending.
    pub lease: tokio::sync::watch::Receiver<Ownership>,
}

/// Splits `events` (in seq order) into waves with at most one event per aggregate.
pub fn waves(events: Vec<OutboxEvent>) -> Vec<Vec<OutboxEvent>> {
    let mut depth: HashMap<String, usize> = HashMap::new();
    let mut waves: Vec<Vec<OutboxEvent>> = Vec::new();
    for event in events {
        let d = depth.entry(event.aggregate_id.clone()).or_insert(0);
        if waves.len() <= *d {
            waves.push(Vec::new());
        }
        waves[*d].push(event);
        *d += 1;
    }
    waves
}

/// Publishes the batch wave by wave, then settles every outcome in two statements.
pub async fn process<P: Publisher>(
    ctx: Arc<BatchContext<P>>,
    batch: Vec<OutboxEvent>,
) -> BatchReport {
    let started = Instant::now();
    ctx.metrics.batch_size.observe(batch.len() as f64);
    let aggregates: Vec<String> = batch.iter().map(|e| e.aggregate_id.clone()).collect();
    let buckets: Vec<i32> = batch.iter().map(|e| e.bucket).collect();
    let mut confirmed: Vec<Uuid> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut stopped: HashSet<String> = HashSet::new();
    let mut broker_down = None;

    for wave in waves(batch) {
        if broker_down.is_some() || ctx.shutdown.is_cancelled() {
            break;
        }
        if !ctx.lease.borrow().leased() {
            tracing::debug!("bucket lease lost; leaving the rest of the batch pending");
            break;
        }
        let wave: Vec<OutboxEvent> = wave
            .into_iter()
            .filter(|e| !stopped.contains(&e.aggregate_id))
            .collect();
        if wave.is_empty() {
            continue;
        }
        let outcomes = ctx.publisher.publish(&wave).await;
        let now = SystemTime::now();
        for (event, outcome) in wave.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    confirmed.push(event.id);
                    ctx.metrics
                        .published
                        .get_or_create(&DestinationLabel {
                            destination: ctx.publisher.destination(event),
                        })
                        .inc();
                    let lag = now.duration_since(event.created_at).unwrap_or_default();
                    ctx.metrics.publish_lag.observe(lag.as_secs_f64());
                }
                Err(error) => {
                    ctx.metrics
                        .failures
                        .get_or_create(&ReasonLabel {
                            reason: error.reason().to_owned(),
                        })
                        .inc();
                    stopped.insert(event.aggregate_id.clone());
                    match ctx.policy.decide(&error, event.attempts) {
                        Directive::Pause => {
                            broker_down.get_or_insert(error);
                        }
                        Directive::Retry(delay) => {
                            ctx.metrics.retries.inc();
                            tracing::warn!(
                                event_id = %event.id,
                                aggregate_type = %event.aggregate_type,
                                aggregate_id = %event.aggregate_id,
                                attempt = event.attempts + 1,
                                reason = error.reason(),
                                error = %error,
                                retry_in = ?delay,
                                "publish failed; will retry"
                            );
                            failures.push(Failure {
                                id: event.id,
                                error: error.to_string(),
                                retry_in: delay,
                                dead: false,
                            });
                        }
                        Directive::Dead => {
                            ctx.metrics.dead.inc();
                            tracing::error!(
                                event_id = %event.id,
                                aggregate_type = %event.aggregate_type,
                                aggregate_id = %event.aggregate_id,
                                attempt = event.attempts + 1,
                                reason = error.reason(),
                                error = %error,
                                "publish failed; event is dead (replay with `outbox-relay replay --id`)"
                            );
                            failures.push(Failure {
                                id: event.id,
                                error: error.to_string(),
                                retry_in: Duration::ZERO,
                                dead: true,
                            });
                        }
                    }
                }
            }
        }
    }

    settle(&ctx, &confirmed, &failures).await;
    ctx.metrics
        .batch_duration
        .observe(started.elapsed().as_secs_f64());
    BatchReport {
        aggregates,
        buckets,
        broker_down,
        confirmed: confirmed.len(),
    }
}

/// Writes the outcomes, retrying while the database is unreachable: a confirmed event that
/// cannot be marked would be published again, so keep trying until the drain deadline.
async fn settle<P>(ctx: &BatchContext<P>, confirmed: &[Uuid], failures: &[Failure]) {
    let mut backoff = ReconnectBackoff::new();
    let mut marked = confirmed.is_empty();
    let mut recorded = failures.is_empty();
    loop {
        if !marked {
            match ctx.store.mark_dispatched(confirmed).await {
                Ok(_) => marked = true,
                Err(error) => ctx.health.set_database_up(false, &error.to_string()),
            }
        }
        if marked && !recorded {
            match ctx.store.record_failures(failures).await {
                Ok(_) => recorded = true,
                Err(error) => ctx.health.set_database_up(false, &error.to_string()),
            }
        }
        if marked && recorded {
            ctx.health.set_database_up(true, "");
            ctx.health.progress();
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = ctx.abandon.cancelled() => {
                tracing::error!(
                    confirmed_unmarked = if marked { 0 } else { confirmed.len() },
                    failures_unrecorded = if recorded { 0 } else { failures.len() },
                    "shutdown deadline passed before outcomes could be saved; \
                     these events will be published again after restart"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, agg: &str) -> OutboxEvent {
        OutboxEvent {
            id: Uuid::new_v4(),
            seq,
            aggregate_type: "t".into(),
            aggregate_id: agg.into(),
            event_type: "e".into(),
            payload: "{}".into(),
            headers: vec![],
            created_at: SystemTime::now(),
            attempts: 0,
            bucket: 0,
        }
    }

    #[test]
    fn waves_hold_one_event_per_aggregate_in_order() {
        let batch = vec![
            ev(1, "a"),
            ev(2, "b"),
            ev(3, "a"),
            ev(4, "a"),
            ev(5, "c"),
            ev(6, "b"),
        ];
        let w = waves(batch);
        let seqs: Vec<Vec<i64>> = w
            .iter()
            .map(|w| w.iter().map(|e| e.seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![1, 2, 5], vec![3, 6], vec![4]]);
    }
}
