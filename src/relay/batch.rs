//! One publish call and the saving of outcomes. The pipeline hands a publish call a set of
//! events (at most one per aggregate, so the broker never sees two events of one aggregate
//! at once); the call publishes them pipelined on one confirm channel and reports each
//! event's outcome, classified by the error policy. Outcomes are saved in batched statements
//! by [`settle`], which keeps trying while the database is unreachable.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    coordinator::Ownership,
    policy::{Directive, RetryPolicy},
};
use crate::{
    backoff::ReconnectBackoff,
    broker::{PublishError, Publisher},
    event::OutboxEvent,
    ops::{
        health::Health,
        metrics::{DestinationLabel, Metrics, ReasonLabel},
    },
    store::{Failure, Store},
};

/// Shared dependencies of publish calls and settles.
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
    /// Cancelled on shutdown: the pipeline stops reading and publishing, settling goes on.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain deadline passed: give up settling.
    pub abandon: CancellationToken,
    /// The replica's bucket lease: a publish call checks it right before publishing (the
    /// buckets may belong to another replica by now); unpublished events stay pending.
    pub lease: tokio::sync::watch::Receiver<Ownership>,
}

/// What became of one event of a publish call.
#[derive(Debug)]
pub enum Fate {
    /// Confirmed by the broker: mark it dispatched.
    Confirmed,
    /// Failed; retry after the delay (an attempt is counted).
    Retry(Duration, String),
    /// Failed for good (an attempt is counted).
    Dead(String),
    /// Not published: the broker is down, the lease was lost, or shutdown. Nothing counted.
    Unpublished,
}

/// The report of one publish call.
#[derive(Debug)]
pub struct CallReport {
    /// Every event of the call with its fate, in call order.
    pub events: Vec<(OutboxEvent, Fate)>,
    /// The broker was unavailable (pause publishing).
    pub broker_down: Option<PublishError>,
}

/// Publishes `events` (one per aggregate) in one call and classifies every outcome.
pub async fn publish_call<P: Publisher>(
    ctx: Arc<BatchContext<P>>,
    events: Vec<OutboxEvent>,
) -> CallReport {
    let leased = {
        let lease = ctx.lease.borrow();
        lease.leased()
            && events
                .iter()
                .all(|e| lease.buckets.binary_search(&e.bucket).is_ok())
    };
    if !leased || ctx.shutdown.is_cancelled() {
        tracing::debug!("bucket lease lost or shutting down; leaving events pending");
        return CallReport {
            events: events.into_iter().map(|e| (e, Fate::Unpublished)).collect(),
            broker_down: None,
        };
    }
    let started = Instant::now();
    ctx.metrics.batch_size.observe(events.len() as f64);
    let outcomes = ctx.publisher.publish(&events).await;
    ctx.metrics
        .batch_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::trace!(events = events.len(), took = ?started.elapsed(), "publish call");
    let now = SystemTime::now();
    let mut broker_down = None;
    let mut report = Vec::with_capacity(events.len());
    for (event, outcome) in events.into_iter().zip(outcomes) {
        let fate = match outcome {
            Ok(()) => {
                ctx.metrics
                    .published
                    .get_or_create(&DestinationLabel {
                        destination: ctx.publisher.destination(&event),
                    })
                    .inc();
                ctx.metrics.confirmed.inc();
                let lag = now.duration_since(event.created_at).unwrap_or_default();
                ctx.metrics.publish_lag.observe(lag.as_secs_f64());
                Fate::Confirmed
            }
            Err(error) => {
                ctx.metrics
                    .failures
                    .get_or_create(&ReasonLabel {
                        reason: error.reason().to_owned(),
                    })
                    .inc();
                classify(&ctx, &event, error, &mut broker_down)
            }
        };
        report.push((event, fate));
    }
    CallReport {
        events: report,
        broker_down,
    }
}

fn classify<P>(
    ctx: &BatchContext<P>,
    event: &OutboxEvent,
    error: PublishError,
    broker_down: &mut Option<PublishError>,
) -> Fate {
    match ctx.policy.decide(&error, event.attempts) {
        Directive::Pause => {
            broker_down.get_or_insert(error);
            Fate::Unpublished
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
            Fate::Retry(delay, error.to_string())
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
            Fate::Dead(error.to_string())
        }
    }
}

/// Outcomes to save in one go.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Confirmed events.
    pub confirmed: Vec<Uuid>,
    /// Failed attempts (retry or dead).
    pub failures: Vec<Failure>,
    /// Events that leave memory once these outcomes are saved (confirmed, dead, and failures
    /// of buckets no longer owned).
    pub forget: Vec<Uuid>,
}

impl Outcomes {
    /// Nothing to save.
    pub fn is_empty(&self) -> bool {
        self.confirmed.is_empty() && self.failures.is_empty()
    }

    /// Events in it.
    pub fn len(&self) -> usize {
        self.confirmed.len() + self.failures.len()
    }
}

/// Writes the outcomes, retrying while the database is unreachable: a confirmed event that
/// cannot be marked would be published again, so keep trying until the drain deadline.
/// Returns the outcomes and whether they were saved.
pub async fn settle<P>(ctx: Arc<BatchContext<P>>, outcomes: Outcomes) -> (Outcomes, bool) {
    let mut backoff = ReconnectBackoff::new();
    let mut marked = outcomes.confirmed.is_empty();
    let mut recorded = outcomes.failures.is_empty();
    loop {
        if !marked {
            match ctx.store.mark_dispatched(&outcomes.confirmed).await {
                Ok(_) => marked = true,
                Err(error) => ctx.health.set_database_up(false, &error.to_string()),
            }
        }
        if marked && !recorded {
            match ctx.store.record_failures(&outcomes.failures).await {
                Ok(_) => recorded = true,
                Err(error) => ctx.health.set_database_up(false, &error.to_string()),
            }
        }
        if marked && recorded {
            ctx.health.set_database_up(true, "");
            ctx.health.progress();
            return (outcomes, true);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = ctx.abandon.cancelled() => {
                tracing::error!(
                    confirmed_unmarked = if marked { 0 } else { outcomes.confirmed.len() },
                    failures_unrecorded = if recorded { 0 } else { outcomes.failures.len() },
                    "shutdown deadline passed before outcomes could be saved; \
                     these events will be published again after restart"
                );
                return (outcomes, false);
            }
        }
    }
}
