//! The status document and the relay's snapshot of it. `outbox-relay status --json` prints a
//! [`StatusDocument`] without the relay's own view; the relay's `GET /status.json` serves the
//! same type with it, from a [`Snapshot`] the gauge refresher replaces on every
//! `metrics.refresh_interval` (a page view never queries the table).

use std::{
    collections::VecDeque,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{health::Health, metrics::Metrics};
use crate::{
    config::StatusPage,
    store::{admin::DeadEvent, status::Status},
};

/// What `status --json` prints and `GET /status.json` serves (a field added to one is in
/// both: they are this type).
#[derive(Debug, Clone, Serialize)]
pub struct StatusDocument {
    /// The relay's version.
    pub version: String,
    /// When the table was read (RFC 3339, UTC): on the page, how fresh the figures are.
    pub read_at: String,
    /// The table's status (flattened into the top level).
    #[serde(flatten)]
    pub status: Status,
    /// The serving relay's own view; `null` from the command line, which is no relay.
    pub relay: Option<RelayView>,
    /// The latest dead events, newest first, without payloads; `null` unless
    /// `metrics.status_page = "details"`.
    pub latest_dead: Option<Vec<DeadEvent>>,
}

impl StatusDocument {
    /// The document for `status`: no relay view, no dead events.
    pub fn of(status: Status) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            read_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            status,
            relay: None,
            latest_dead: None,
        }
    }
}

/// One relay's view: its buckets, its connections, its publish rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayView {
    /// Buckets this replica owns.
    pub owned_buckets: i64,
    /// Buckets in all (`relay.buckets`).
    pub buckets: u32,
    /// Live relays on the table, as this one counts them.
    pub relays: i64,
    /// Postgres answers.
    pub database_up: bool,
    /// The broker connection is usable.
    pub broker_up: bool,
    /// Why the relay is not ready (`null` when it is).
    pub not_ready: Option<String>,
    /// Events this replica had confirmed per second, over the last minute.
    pub publish_rate_per_second: f64,
    /// Pending events divided by that rate (`null` while nothing is published, or nothing
    /// is pending: 0). With several replicas, each drains its own buckets' share.
    pub time_to_drain_seconds: Option<f64>,
}

/// How far back the publish rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The latest document, shared by the refresher (writer) and the HTTP server (readers).
pub struct Snapshot {
    /// `metrics.status_page`.
    pub page: StatusPage,
    /// `metrics.refresh_interval`: how often the document is replaced.
    pub refresh: Duration,
    buckets: u32,
    document: RwLock<Option<Arc<StatusDocument>>>,
    /// `(when, confirmed events so far)`, oldest first, spanning [`RATE_WINDOW`].
    confirmed: RwLock<VecDeque<(Instant, u64)>>,
}

impl Snapshot {
    /// An empty snapshot (`None` until the first refresh).
    pub fn new(page: StatusPage, refresh: Duration, buckets: u32) -> Self {
        Self {
            page,
            refresh,
            buckets,
            document: RwLock::new(None),
            confirmed: RwLock::new(VecDeque::new()),
        }
    }

    /// The latest document.
    pub fn get(&self) -> Option<Arc<StatusDocument>> {
        self.document
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the document with `status` and the relay's current view.
    pub fn update(
        &self,
        status: Status,
        latest_dead: Option<Vec<DeadEvent>>,
        metrics: &Metrics,
        health: &Health,
    ) {
        let relay = self.view(status.backlog.pending, metrics, health);
        let document = StatusDocument {
            relay: Some(relay),
            latest_dead,
            ..StatusDocument::of(status)
        };
        *self.document.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(document));
    }

    /// After a failed refresh: keeps the last figures (their `read_at` says how old they
    /// are) but shows the relay's current view, e.g. the database down.
    pub fn update_view(&self, metrics: &Metrics, health: &Health) {
        let mut slot = self.document.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.as_ref() {
            let relay = self.view(old.status.backlog.pending, metrics, health);
            let document = StatusDocument {
                relay: Some(relay),
                ..old.as_ref().clone()
            };
            *slot = Some(Arc::new(document));
        }
    }

    fn view(&self, pending: i64, metrics: &Metrics, health: &Health) -> RelayView {
        let rate = self.publish_rate(metrics.confirmed.get(), Instant::now());
        RelayView {
            owned_buckets: metrics.owned_buckets.get(),
            buckets: self.buckets,
            relays: metrics.relays.get(),
            database_up: health.database_up(),
            broker_up: health.broker_up(),
            not_ready: health.not_ready_reason(),
            publish_rate_per_second: rate,
            time_to_drain_seconds: time_to_drain(pending, rate),
        }
    }

    /// Records the confirmed total at `now`; the rate over the samples within the window.
    fn publish_rate(&self, total: u64, now: Instant) -> f64 {
        let mut samples = self.confirmed.write().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, total));
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            samples.pop_front();
        }
        match samples.front() {
            Some((at, first)) if now > *at => {
                total.saturating_sub(*first) as f64 / now.duration_since(*at).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// `pending / rate`: 0 when nothing is pending, `None` when events wait and none go out.
fn time_to_drain(pending: i64, rate: f64) -> Option<f64> {
    if pending == 0 {
        Some(0.0)
    } else if rate > 0.0 {
        Some(pending as f64 / rate)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_spans_the_window() {
        let snapshot = Snapshot::new(StatusPage::Summary, Duration::from_secs(5), 64);
        let start = Instant::now();
        assert_eq!(snapshot.publish_rate(100, start), 0.0);
        let rate = snapshot.publish_rate(130, start + Duration::from_secs(10));
        assert!((rate - 3.0).abs() < 1e-9, "{rate}");
        // Samples older than the window no longer count.
        let rate = snapshot.publish_rate(130, start + Duration::from_secs(75));
        assert_eq!(rate, 0.0);
    }

    #[test]
    fn a_failed_refresh_keeps_the_figures_and_shows_the_connections() {
        // GIVEN a snapshot of three pending events taken while the database was up
        let metrics = Arc::new(Metrics::new());
        let health = Health::new(metrics.clone(), Duration::from_secs(300));
        health.set_database_up(true, "");
        let snapshot = Snapshot::new(StatusPage::Summary, Duration::from_secs(5), 64);
        let mut status = Status::default();
        status.backlog.pending = 3;
        snapshot.update(status, None, &metrics, &health);

        // WHEN the database goes away and the next refresh fails
        health.set_database_up(false, "connection refused");
        snapshot.update_view(&metrics, &health);

        // THEN the figures stay, and the relay's view says the database is down, and why
        let doc = snapshot.get().unwrap();
        assert_eq!(doc.status.backlog.pending, 3);
        let relay = doc.relay.as_ref().unwrap();
        assert!(!relay.database_up);
        assert!(
            relay
                .not_ready
                .as_deref()
                .unwrap()
                .contains("connection refused")
        );
    }

    #[test]
    fn time_to_drain_is_unknown_while_nothing_goes_out() {
        assert_eq!(time_to_drain(0, 0.0), Some(0.0));
        assert_eq!(time_to_drain(30, 3.0), Some(10.0));
        assert_eq!(time_to_drain(30, 0.0), None);
    }
}
