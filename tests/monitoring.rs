//! What monitoring sees of a running relay: every metric family in `/metrics` from start-up
//! (so `rate()`, `increase()` and `sum()` never read "no data"), and the Grafana dashboard's
//! queries evaluated by a real Prometheus scraping a relay through a backlog, a dead event
//! and a broker outage.
#![allow(clippy::unwrap_used)]

mod common;

use common::{faults::http_get, *};
use outbox_relay::broker::PublishError;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_exported_from_start_up_on_an_empty_outbox() {
    // GIVEN a relay on an empty outbox, serving /metrics, and an exchange with no queue
    // bound (so the event inserted at the end stays pending, retrying)
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let mut config = relay_config(&db, &broker);
    config.metrics.refresh_interval = std::time::Duration::from_millis(100);
    let relay = start_relay(&config);
    let stop = CancellationToken::new();

    // WHEN it is ready (database and broker connected)
    let addr = serve_ready(&relay, &stop).await;
    let text = http_get(addr, "/metrics").await.1;

    // THEN every failure reason and the configured exchange read 0, the per-type gauges have
    // a zero series for sums, and the new families are there
    let mut expected: Vec<String> = PublishError::REASONS
        .iter()
        .map(|r| format!("outbox_publish_failures_total{{reason=\"{r}\"}} 0\n"))
        .collect();
    expected.push(format!(
        "outbox_events_published_total{{destination=\"{}\"}} 0\n",
        broker.exchange
    ));
    for family in [
        "outbox_pending_events",
        "outbox_dead_events",
        "outbox_oldest_pending_age_by_type_seconds",
        "outbox_oldest_eligible_age_by_type_seconds",
    ] {
        expected.push(format!("{family}{{aggregate_type=\"\"}} 0"));
    }
    for line in [
        "outbox_retention_deleted_total 0\n",
        "outbox_events_dead_total 0\n",
        "outbox_retries_total 0\n",
        "outbox_oldest_pending_age_seconds 0.0\n",
        "outbox_oldest_eligible_age_seconds 0.0\n",
        "outbox_connection_attempts_total{target=\"broker\",outcome=\"error\"} 0\n",
    ] {
        expected.push(line.to_owned());
    }
    for needle in &expected {
        assert!(
            text.contains(needle.as_str()),
            "missing {needle} in\n{text}"
        );
    }

    // AND once an aggregate type has events, the placeholder goes
    let client = db.client().await;
    insert_event(&client, "order", "o-1", "created", serde_json::json!({})).await;
    eventually("order type exported", || async {
        let text = http_get(addr, "/metrics").await.1;
        text.contains("outbox_pending_events{aggregate_type=\"order\"}")
            && !text.contains("aggregate_type=\"\"")
    })
    .await;
    stop.cancel();
    relay.stop().await;
    broker.cleanup().await;
}
