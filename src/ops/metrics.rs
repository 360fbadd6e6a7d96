//! Prometheus metrics (prometheus-client, one registry per relay instance, no globals).
//! Counter names get the `_total` suffix from the exposition format.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `destination` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    /// Exchange or queue.
    pub destination: String,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// e.g. `unroutable`, `nacked`, `timeout`, `rejected`, `too_large`, `broker_down`.
    pub reason: String,
}

/// `aggregate_type` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AggregateTypeLabel {
    /// The aggregate type.
    pub aggregate_type: String,
}

/// `target` and `outcome` labels of connection attempts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabel {
    /// `database` or `broker`.
    pub target: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// A gauge holding seconds.
pub type AgeGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The `aggregate_type` of the placeholder series the per-type gauges export (at 0) while
/// the relay knows no aggregate type, so `sum(outbox_pending_events)` reads 0 on an empty
/// outbox instead of "no data". Prometheus treats an empty label value as no label.
pub const NO_AGGREGATE_TYPE: &str = "";

/// Every metric the relay exports.
pub struct Metrics {
    /// The registry rendered at `/metrics`.
    pub registry: Registry,
    /// `outbox_events_published_total{destination}`
    pub published: Family<DestinationLabel, Counter>,
    /// `outbox_publish_failures_total{reason}`
    pub failures: Family<ReasonLabel, Counter>,
    /// `outbox_events_dead_total`
    pub dead: Counter,
    /// `outbox_retries_total`: failed attempts scheduled for a retry.
    pub retries: Counter,
    /// `outbox_publish_lag_seconds`: `created_at` to broker confirmation.
    pub publish_lag: Histogram,
    /// `outbox_batch_size`: events per claimed batch.
    pub batch_size: Histogram,
    /// `outbox_batch_duration_seconds`: publish + settle of one batch.
    pub batch_duration: Histogram,
    /// `outbox_broker_up`
    pub broker_up: Gauge,
    /// `outbox_database_up`
    pub database_up: Gauge,
    /// `outbox_pending_events{aggregate_type}`
    pub pending: Family<AggregateTypeLabel, Gauge>,
    /// `outbox_dead_events{aggregate_type}`
    pub dead_events: Family<AggregateTypeLabel, Gauge>,
    /// `outbox_oldest_pending_age_seconds`
    pub oldest_pending_age: AgeGauge,
    /// `outbox_oldest_eligible_age_seconds`
    pub oldest_eligible_age: AgeGauge,
    /// `outbox_backlog_estimated`: 1 while more events are pending or dead than the status
    /// window reads (`store::status::WINDOW`): the counts past it are estimates.
    pub backlog_estimated: Gauge,
    /// `outbox_oldest_pending_age_by_type_seconds{aggregate_type}`: the unlabelled gauge
    /// above per aggregate type (a second family, so the unlabelled series the alerts and
    /// dashboards aggregate keeps its meaning).
    pub oldest_pending_age_by_type: Family<AggregateTypeLabel, AgeGauge>,
    /// `outbox_oldest_eligible_age_by_type_seconds{aggregate_type}`: which types are not
    /// being published.
    pub oldest_eligible_age_by_type: Family<AggregateTypeLabel, AgeGauge>,
    /// `outbox_retention_deleted_total`: dispatched rows deleted by this relay's retention.
    pub retention_deleted: Counter,
    /// `outbox_read_gaps_total`: events a read left for a rescan because an earlier pending
    /// event of their aggregate was not in memory (committed late, or replayed).
    pub read_gaps: Counter,
    /// `outbox_read_parked_left_total`: events a read left in the table because their
    /// aggregate is parked (its head waits out a retry); read again once the head is through.
    pub read_parked_left: Counter,
    /// `outbox_events_in_memory`: events this relay holds (read ahead, in flight, or waiting
    /// for their outcome to be saved); at most `relay.max_pending_in_memory`.
    pub events_in_memory: Gauge,
    /// `outbox_events_in_memory_peak`: the most events held at once since the relay started.
    pub events_in_memory_peak: Gauge,
    /// Events confirmed, all destinations together. Not exported (the per-destination
    /// `outbox_events_published_total` is); it feeds the status page's publish rate.
    pub confirmed: Counter,
    /// `outbox_owned_buckets`: buckets this replica owns (of `relay.buckets`).
    pub owned_buckets: Gauge,
    /// `outbox_relays`: live relays on this table, as seen by this one.
    pub relays: Gauge,
    /// `outbox_connection_attempts_total{target, outcome}`: every connection attempt to the
    /// database or the broker (all four series exported from start-up, so a storm shows as a
    /// rate and alerts need no "absent" special case).
    pub connection_attempts: Family<AttemptLabel, Counter>,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let published = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "outbox_events_published",
            "Events confirmed by the broker",
            published.clone(),
        );
        let failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "outbox_publish_failures",
            "Failed publish attempts by reason",
            failures.clone(),
        );
        let dead = Counter::default();
        registry.register("outbox_events_dead", "Events moved to dead", dead.clone());
        let retries = Counter::default();
        registry.register(
            "outbox_retries",
            "Failed attempts scheduled for a retry with backoff",
            retries.clone(),
        );
        let publish_lag = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            300.0, 900.0, 3600.0,
        ]);
        registry.register(
            "outbox_publish_lag_seconds",
            "Seconds from created_at to broker confirmation",
            publish_lag.clone(),
        );
        let batch_size =
            Histogram::new([1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]);
        registry.register(
            "outbox_batch_size",
            "Events per claimed batch",
            batch_size.clone(),
        );
        let batch_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
        ]);
        registry.register(
            "outbox_batch_duration_seconds",
            "Seconds to publish and settle one batch",
            batch_duration.clone(),
        );
        let broker_up = Gauge::default();
        registry.register(
            "outbox_broker_up",
            "1 while the broker connection is usable, 0 while publishing is paused",
            broker_up.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "outbox_database_up",
            "1 while Postgres answers, 0 while the relay reconnects",
            database_up.clone(),
        );
        let pending = Family::<AggregateTypeLabel, Gauge>::default();
        registry.register(
            "outbox_pending_events",
            "Pending events by aggregate type",
            pending.clone(),
        );
        let dead_events = Family::<AggregateTypeLabel, Gauge>::default();
        registry.register(
            "outbox_dead_events",
            "Dead events by aggregate type",
            dead_events.clone(),
        );
        let oldest_pending_age = AgeGauge::default();
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none)",
            oldest_pending_age.clone(),
        );
        let oldest_eligible_age = AgeGauge::default();
        registry.register(
            "outbox_oldest_eligible_age_seconds",
            "Age of the oldest pending event that is due now (not waiting out a backoff)",
            oldest_eligible_age.clone(),
        );
        let backlog_estimated = Gauge::default();
        registry.register(
            "outbox_backlog_estimated",
            "1 when more events are pending or dead than the status window reads \
             (10,000 of each): the counts past it are estimates",
            backlog_estimated.clone(),
        );
        let oldest_pending_age_by_type = Family::<AggregateTypeLabel, AgeGauge>::default();
        registry.register(
            "outbox_oldest_pending_age_by_type_seconds",
            "Age of the oldest pending event, by aggregate type (0 when none)",
            oldest_pending_age_by_type.clone(),
        );
        let oldest_eligible_age_by_type = Family::<AggregateTypeLabel, AgeGauge>::default();
        registry.register(
            "outbox_oldest_eligible_age_by_type_seconds",
            "How long the oldest due event has waited, by aggregate type (0 when none)",
            oldest_eligible_age_by_type.clone(),
        );
        let retention_deleted = Counter::default();
        registry.register(
            "outbox_retention_deleted",
            "Dispatched rows deleted by this relay's retention purge",
            retention_deleted.clone(),
        );
        let read_gaps = Counter::default();
        registry.register(
            "outbox_read_gaps",
            "Events a read left for a rescan: an earlier pending event of their aggregate had \
             not been read yet (committed late, or replayed)",
            read_gaps.clone(),
        );
        let read_parked_left = Counter::default();
        registry.register(
            "outbox_read_parked_left",
            "Events a read left in the table because their aggregate is parked (its head waits \
             out a retry); read again once the head is confirmed or dead",
            read_parked_left.clone(),
        );
        let events_in_memory = Gauge::default();
        registry.register(
            "outbox_events_in_memory",
            "Events held in memory: read ahead, in flight, or waiting for their outcome to be \
             saved (at most relay.max_pending_in_memory)",
            events_in_memory.clone(),
        );
        let events_in_memory_peak = Gauge::default();
        registry.register(
            "outbox_events_in_memory_peak",
            "The most events held in memory at once since the relay started",
            events_in_memory_peak.clone(),
        );
        let owned_buckets = Gauge::default();
        registry.register(
            "outbox_owned_buckets",
            "Aggregate hash buckets this replica owns and publishes",
            owned_buckets.clone(),
        );
        let relays = Gauge::default();
        registry.register(
            "outbox_relays",
            "Live relays on this table, as counted by this replica",
            relays.clone(),
        );
        let connection_attempts = Family::<AttemptLabel, Counter>::default();
        for target in ["database", "broker"] {
            for outcome in ["ok", "error"] {
                let _ = connection_attempts.get_or_create(&AttemptLabel { target, outcome });
            }
        }
        registry.register(
            "outbox_connection_attempts",
            "Connection attempts to the database and the broker, by outcome",
            connection_attempts.clone(),
        );
        let metrics = Self {
            registry,
            connection_attempts,
            owned_buckets,
            relays,
            published,
            failures,
            dead,
            retries,
            publish_lag,
            batch_size,
            batch_duration,
            broker_up,
            database_up,
            pending,
            dead_events,
            oldest_pending_age,
            oldest_eligible_age,
            backlog_estimated,
            oldest_pending_age_by_type,
            oldest_eligible_age_by_type,
            retention_deleted,
            read_gaps,
            read_parked_left,
            events_in_memory,
            events_in_memory_peak,
            confirmed: Counter::default(),
        };
        metrics.set_placeholder(true);
        metrics
    }

    /// Exports the counters whose label values are known before anything happens at 0, so
    /// `rate()` and `increase()` see the first failure after a start: every failure
    /// `reason` and every configured destination.
    pub fn export_known_labels(&self, reasons: &[&str], destinations: &[String]) {
        for reason in reasons {
            let _ = self.failures.get_or_create(&ReasonLabel {
                reason: (*reason).to_owned(),
            });
        }
        for destination in destinations {
            let _ = self.published.get_or_create(&DestinationLabel {
                destination: destination.clone(),
            });
        }
    }

    /// Adds (at 0) or removes the [`NO_AGGREGATE_TYPE`] series of the per-type gauges.
    pub fn set_placeholder(&self, present: bool) {
        let label = AggregateTypeLabel {
            aggregate_type: NO_AGGREGATE_TYPE.to_owned(),
        };
        if present {
            self.pending.get_or_create(&label).set(0);
            self.dead_events.get_or_create(&label).set(0);
            self.oldest_pending_age_by_type
                .get_or_create(&label)
                .set(0.0);
            self.oldest_eligible_age_by_type
                .get_or_create(&label)
                .set(0.0);
        } else {
            self.pending.remove(&label);
            self.dead_events.remove(&label);
            self.oldest_pending_age_by_type.remove(&label);
            self.oldest_eligible_age_by_type.remove(&label);
        }
    }

    /// The counter of connection attempts to `target` (`database` or `broker`) with
    /// `outcome` (`ok` or `error`).
    pub fn attempts(&self, target: &'static str, ok: bool) -> Counter {
        let outcome = if ok { "ok" } else { "error" };
        self.connection_attempts
            .get_or_create(&AttemptLabel { target, outcome })
            .clone()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
