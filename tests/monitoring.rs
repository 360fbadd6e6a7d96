//! What monitoring sees of a running relay: every metric family in `/metrics` from start-up
//! (so `rate()`, `increase()` and `sum()` never read "no data"), and the Grafana dashboard's
//! queries evaluated by a real Prometheus scraping a relay through a backlog, a dead event
//! and a broker outage.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{http::http_get, prometheus::Prometheus, *};
use outbox_relay::broker::PublishError;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_exported_from_start_up_on_an_empty_outbox() {
    // GIVEN a relay on an empty outbox, serving /metrics, and an exchange with no queue
    // bound (so the event inserted at the end stays pending, retrying)
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let mut config = relay_config(&db, &broker);
    config.metrics.refresh_interval = Duration::from_millis(100);
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

/// One query of the dashboard: its panel, legend and PromQL.
struct PanelQuery {
    panel: String,
    legend: String,
    expr: String,
}

/// Every target of every panel in `config/grafana/outbox-relay.json`, with the dashboard's
/// variables replaced as Grafana would with "All" selected (`.*`, which also matches the
/// missing `namespace` label of a relay run outside Kubernetes) and `$__rate_interval` by
/// a window of ten one-second scrapes.
fn dashboard_queries() -> Vec<PanelQuery> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/outbox-relay.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        // Every panel says what to do when it is red, and has a unit.
        let title = panel["title"].as_str().unwrap();
        assert!(
            panel["description"]
                .as_str()
                .is_some_and(|d| d.contains("Red")),
            "panel {title:?} has no description of what to do when it is red"
        );
        assert!(
            panel["fieldConfig"]["defaults"]["unit"].is_string(),
            "panel {title:?} has no unit"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", ".*")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "10s");
            assert!(!expr.contains('$'), "unreplaced variable in {expr}");
            queries.push(PanelQuery {
                panel: panel["title"].as_str().unwrap().to_owned(),
                legend: target["legendFormat"].as_str().unwrap_or("").to_owned(),
                expr,
            });
        }
    }
    queries
}

/// The metric names a query uses (`outbox_*`, histogram `_bucket` names included).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("outbox_"))
        .map(str::to_owned)
        .collect()
}

/// What one series of a panel query showed over the test.
struct Shown {
    panel: String,
    /// The target's legend and the series' labels, e.g. `{{reason}} {"reason":"unroutable"}`.
    series: String,
    min: f64,
    max: f64,
}

/// The lowest and highest value of every series a range query returned.
fn extremes(query: &PanelQuery, result: &[serde_json::Value]) -> Vec<Shown> {
    result
        .iter()
        .map(|series| {
            let values: Vec<f64> = series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(prometheus::sample_value)
                .filter(|v| !v.is_nan())
                .collect();
            Shown {
                panel: query.panel.clone(),
                series: format!("{} {}", query.legend, series["metric"]),
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// The series of `panel` whose legend or labels contain `matching`.
fn shown<'a>(all: &'a [Shown], panel: &str, matching: &str) -> Vec<&'a Shown> {
    let found: Vec<&Shown> = all
        .iter()
        .filter(|s| s.panel == panel && s.series.contains(matching))
        .collect();
    assert!(
        !found.is_empty(),
        "panel {panel:?} has no series {matching}"
    );
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_shows_a_backlog_a_dead_event_and_a_broker_outage() {
    // GIVEN a relay publishing through a proxy to RabbitMQ (orders routed, invoices not:
    // they go dead after two attempts), purging dispatched rows after a second, and a real
    // Prometheus scraping it and evaluating the alert rules every second
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    broker.bind("order.*").await;
    let mut rx = broker.consume().await;
    let (proxy, proxied) = proxy::rabbitmq_proxy().await;
    let mut config = relay_config(&db, &broker);
    config.broker.rabbitmq.url = proxied;
    config.metrics.refresh_interval = Duration::from_millis(200);
    config.retry.max_attempts = 2;
    config.retention.dispatched = Duration::from_secs(1);
    config.retention.interval = Duration::from_millis(200);
    let relay = start_relay(&config);
    let stop = CancellationToken::new();
    let addr = serve_ready(&relay, &stop).await;
    let started = SystemTime::now();
    let prom = Prometheus::start(&[addr]).await;
    prom.await_value("first scrape", "up{job=\"outbox-relay\"}", |v| v == 1.0)
        .await;
    let client = db.client().await;

    // WHEN orders flow, and are purged once dispatched
    for i in 0..20 {
        db.insert(&client, &format!("o-{}", i % 4), "created").await;
    }
    receive_n(&mut rx, 20).await;
    prom.await_value(
        "deliveries scraped",
        "sum(outbox_events_published_total)",
        |v| v >= 20.0,
    )
    .await;
    prom.await_value(
        "retention scraped",
        "sum(outbox_retention_deleted_total)",
        |v| v >= 1.0,
    )
    .await;

    // AND an invoice nobody routes goes dead
    insert_event(&client, "invoice", "i-1", "issued", serde_json::json!({})).await;
    prom.await_value("dead event scraped", "max(outbox_dead_events)", |v| {
        v == 1.0
    })
    .await;

    // AND the broker goes away while orders keep coming (a backlog that ages)
    proxy.cut();
    for i in 0..30 {
        db.insert(&client, &format!("o-{}", i % 4), "during").await;
    }
    prom.await_value("broker down scraped", "min(outbox_broker_up)", |v| v == 0.0)
        .await;
    prom.await_value(
        "backlog scraped",
        "max(outbox_pending_events{aggregate_type=\"order\"})",
        |v| v == 30.0,
    )
    .await;
    prom.await_value(
        "eligible age scraped",
        "max(outbox_oldest_eligible_age_by_type_seconds{aggregate_type=\"order\"})",
        |v| v >= 2.0,
    )
    .await;
    prom.await_value(
        "refused reconnects scraped",
        "sum(outbox_connection_attempts_total{target=\"broker\", outcome=\"error\"})",
        |v| v >= 1.0,
    )
    .await;
    prom.await_value(
        "broker-down alert pending",
        "count(ALERTS{alertname=\"OutboxBrokerDown\"})",
        |v| v >= 1.0,
    )
    .await;

    // AND comes back: the backlog drains
    proxy.restore();
    receive_n(&mut rx, 30).await;
    prom.await_value(
        "backlog drained",
        "max(outbox_pending_events{aggregate_type=\"order\"})",
        |v| v == 0.0,
    )
    .await;
    prom.await_value("broker up scraped", "min(outbox_broker_up)", |v| v == 1.0)
        .await;

    // THEN every panel query uses metrics the relay exports and returns series
    let exported = http_get(addr, "/metrics").await.1;
    let mut all = Vec::new();
    for query in dashboard_queries() {
        for name in metric_names(&query.expr) {
            assert!(
                exported
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "panel {:?} queries {name}, which the relay does not export",
                query.panel
            );
        }
        let result = prom.query_range(&query.expr, started).await;
        assert!(
            !result.is_empty(),
            "panel {:?} ({}) returned no series: {}",
            query.panel,
            query.legend,
            query.expr
        );
        all.extend(extremes(&query, &result));
    }

    // AND the panels show what happened (printed: panel, series, lowest and highest value)
    for s in &all {
        println!(
            "{:40} {:70} min {:>8.3} max {:>8.3}",
            s.panel, s.series, s.min, s.max
        );
    }
    for (panel, matching, at_least) in [
        ("Oldest eligible event", "", 2.0),
        ("Oldest pending event", "", 2.0),
        ("Pending events", "", 30.0),
        ("Time to drain", "", 1.0),
        ("Dead events", "", 1.0),
        ("Oldest eligible age by aggregate type", "\"order\"", 2.0),
        ("Oldest pending age by aggregate type", "\"order\"", 2.0),
        ("Pending events by aggregate type", "\"order\"", 30.0),
        ("Dead events by aggregate type", "\"invoice\"", 1.0),
        ("Publish rate", "destination", 0.01),
        ("Failures by reason", "\"unroutable\"", 0.01),
        ("Failures by reason", "went dead", 0.01),
        ("Publish lag p50 / p99", "p99", 0.000_1),
        (
            "Connection attempts",
            "\"error\",\"target\":\"broker\"",
            0.01,
        ),
        ("Bucket ownership per replica", "instance", 64.0),
        ("Retention deletions", "", 0.01),
    ] {
        let max = shown(&all, panel, matching)
            .iter()
            .map(|s| s.max)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            max >= at_least,
            "panel {panel:?} {matching} peaked at {max}, expected at least {at_least}"
        );
    }
    let broker_up = shown(&all, "Database and broker up", "broker");
    assert_eq!(
        (broker_up[0].min, broker_up[0].max),
        (0.0, 1.0),
        "the broker outage does not show"
    );

    stop.cancel();
    relay.stop().await;
    broker.cleanup().await;
}
