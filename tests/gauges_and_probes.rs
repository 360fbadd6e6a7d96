//! What the relay's ops port says about a running relay against real services: the
//! table-derived gauges on `/metrics` (pending, oldest pending and oldest eligible age,
//! counters), `/healthz` (liveness, wedged pipeline) and `/readyz` (database and broker
//! connected). Every metric family from start-up, the dashboard and the alert rules are in
//! tests/monitoring.rs; the operator commands are in tests/operator_commands.rs.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{http::http_get, metrics::sample, process::status_json, proxy::postgres_proxy, *};
use outbox_relay::{
    broker::{Outcome, PublishError, Publisher},
    event::OutboxEvent,
};
use tokio_util::sync::CancellationToken;

/// A publisher that connects but never confirms: the pipeline is wedged.
struct NeverConfirms;

impl Publisher for NeverConfirms {
    async fn connect(&self) -> Result<(), PublishError> {
        Ok(())
    }
    async fn publish(&self, _events: &[OutboxEvent]) -> Vec<Outcome> {
        std::future::pending().await
    }
    fn destination(&self, _event: &OutboxEvent) -> String {
        "nowhere".into()
    }
    async fn close(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_gauges_and_probes_follow_the_table() {
    // GIVEN a relay with fast gauge refreshes and its HTTP server
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    broker.bind("order.*").await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.metrics.refresh_interval = Duration::from_millis(50);
    config.retry.initial_backoff = Duration::from_secs(3600);
    config.retry.max_backoff = Duration::from_secs(3600);
    let relay = start_relay(&config);
    let stop = CancellationToken::new();
    let addr = serve_ready(&relay, &stop).await;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);

    // WHEN an order is delivered and an unroutable invoice waits out a one-hour backoff
    let client = db.client().await;
    let order = insert_event(&client, "order", "o-1", "created", serde_json::json!({})).await;
    insert_event(&client, "invoice", "i-1", "issued", serde_json::json!({})).await;
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, order.to_string());

    // THEN the gauges show one pending invoice, old but not eligible, and the counters count
    eventually("gauges refreshed", || async {
        let text = http_get(addr, "/metrics").await.1;
        text.contains("outbox_pending_events{aggregate_type=\"invoice\"} 1")
            && text.contains("outbox_oldest_eligible_age_seconds 0.0")
            && !text.contains("outbox_oldest_pending_age_seconds 0.0")
    })
    .await;
    let text = http_get(addr, "/metrics").await.1;
    for needle in [
        "outbox_events_published_total{destination=",
        "outbox_publish_failures_total{reason=\"unroutable\"} 1",
        "outbox_retries_total 1",
        "outbox_publish_lag_seconds_count 1",
        "outbox_batch_size_count",
        "outbox_batch_duration_seconds_count",
        "outbox_broker_up 1",
        "outbox_database_up 1",
        "outbox_dead_events",
        "outbox_events_dead_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    stop.cancel();
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_backoff_and_behind_it_are_old_but_not_eligible() {
    // GIVEN a relay with fast gauge refreshes and a tiny wedge limit
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.metrics.refresh_interval = Duration::from_millis(50);
    config.metrics.wedged_after = Duration::from_millis(100);
    let relay = start_relay(&config);
    let stop = CancellationToken::new();
    let addr = serve_ops(&relay, &stop).await;
    let client = db.client().await;

    // WHEN an order event waits out a one-hour backoff (set by SQL), a second event of the
    // same order is written behind it, and another order is published
    client
        .batch_execute(
            "INSERT INTO outbox_events
                 (aggregate_type, aggregate_id, event_type, payload, attempts, last_error,
                  created_at, available_at)
             VALUES ('order', 'o-1', 'created', '{}', 1, 'nacked',
                     now() - interval '10 minutes', now() + interval '1 hour')",
        )
        .await
        .unwrap();
    let second = insert_event(&client, "order", "o-1", "paid", serde_json::json!({})).await;
    let other = insert_event(&client, "order", "o-2", "created", serde_json::json!({})).await;
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, other.to_string());

    // THEN two events are pending, the oldest ten minutes old, but none is eligible
    eventually("gauges show the backoff", || async {
        let text = relay.metrics.render();
        text.contains("outbox_pending_events{aggregate_type=\"order\"} 2")
            && text.contains("outbox_oldest_eligible_age_seconds 0.0")
    })
    .await;
    let text = relay.metrics.render();
    let pending_age = sample(&text, "outbox_oldest_pending_age_seconds").unwrap();
    assert!(pending_age >= 600.0, "{pending_age}");
    // AND the liveness probe does not call that wedged
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    // AND status explains it
    let v = status_json(&db.url);
    assert_eq!(
        (v["retrying"].as_i64(), v["blocked"].as_i64()),
        (Some(1), Some(1))
    );

    // WHEN the backoff ends
    client
        .batch_execute(
            "UPDATE outbox_events SET available_at = now() \
             WHERE aggregate_id = 'o-1' AND attempts = 1",
        )
        .await
        .unwrap();

    // THEN both are delivered in order and the order gauge drops to 0
    let got = receive_n(&mut rx, 2).await;
    assert_eq!(got[1].message_id, second.to_string());
    eventually("pending gauge drops to 0", || async {
        relay
            .metrics
            .render()
            .contains("outbox_pending_events{aggregate_type=\"order\"} 0")
    })
    .await;
    stop.cancel();
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_broker_is_unreachable() {
    // GIVEN a relay whose broker does not exist
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let mut config = relay_config(&db, &broker);
    config.broker.rabbitmq.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let relay = start_relay(&config);
    let stop = CancellationToken::new();
    let addr = serve_ops(&relay, &stop).await;

    // THEN it reports the broker down and is not ready
    eventually("broker_up gauge reports down", || async {
        http_get(addr, "/metrics")
            .await
            .1
            .contains("outbox_broker_up 0")
    })
    .await;
    assert_eq!(http_get(addr, "/readyz").await.0, 503);
    // AND liveness stays green: a restart would not bring the broker back
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    stop.cancel();
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_connection() {
    // GIVEN a relay that reaches Postgres through a proxy we can cut
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let (proxy, url_via_proxy) = postgres_proxy(&db.name).await;
    let mut config = relay_config(&db, &broker);
    config.database.url = url_via_proxy.parse().unwrap();
    config.database.connect_timeout = Duration::from_secs(1);
    let relay = start_relay(&config);
    let stop = CancellationToken::new();
    let addr = serve_ops(&relay, &stop).await;

    // THEN it becomes ready once connected
    eventually("ready", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;

    // WHEN the database goes away THEN it is not ready, and says so in the gauge
    proxy.cut();
    eventually("not ready", || async {
        http_get(addr, "/readyz").await.0 == 503
    })
    .await;
    assert!(relay.metrics.render().contains("outbox_database_up 0"));
    assert_eq!(http_get(addr, "/healthz").await.0, 200);

    // WHEN it is back THEN ready again
    proxy.restore();
    eventually("ready again", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    stop.cancel();
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_when_the_pipeline_is_wedged() {
    // GIVEN a relay whose publisher never confirms and a short wedge limit
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let mut config = relay_config(&db, &broker);
    config.metrics.refresh_interval = Duration::from_millis(50);
    config.metrics.wedged_after = Duration::from_millis(300);
    let relay = start_relay_with(&config, NeverConfirms);
    let stop = CancellationToken::new();
    let addr = serve_ready(&relay, &stop).await;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);

    // WHEN an event is written and never confirmed
    let client = db.client().await;
    insert_event(&client, "order", "o-1", "created", serde_json::json!({})).await;

    // THEN liveness turns 503 and says why
    eventually("healthz reports wedged", || async {
        http_get(addr, "/healthz").await.0 == 503
    })
    .await;
    assert!(http_get(addr, "/healthz").await.1.contains("wedged"));
    assert!(
        !relay
            .metrics
            .render()
            .contains("outbox_oldest_eligible_age_seconds 0.0")
    );
    stop.cancel();
    // The never-confirming batch is abandoned at the shutdown timeout; do not wait for it.
    relay.shutdown.cancel();
    broker.cleanup().await;
}
