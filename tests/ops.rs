//! Operations against real services: the `status`, `dead list` and `replay` commands through
//! the real binary, the table-derived gauges, `/metrics`, `/healthz` and `/readyz`.
//! Retention and `purge` are in tests/retention.rs.
#![allow(clippy::unwrap_used)]

mod common;

use std::{process::Command, time::Duration};

use common::{
    faults::{Proxy, http_get},
    *,
};
use outbox_relay::{
    broker::{Outcome, PublishError, Publisher},
    event::OutboxEvent,
};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// The real binary, configured only by `OUTBOX_RELAY_DATABASE__URL` for `db`.
fn relay_cmd(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTBOX_RELAY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.env("OUTBOX_RELAY_DATABASE__URL", &db.url);
    cmd
}

/// Runs `cmd`: (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status --json`, parsed.
fn status_json(db: &TestDb) -> serde_json::Value {
    let (code, stdout, stderr) = run(relay_cmd(db).args(["status", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

async fn exec(client: &Client, sql: &str) {
    client.batch_execute(sql).await.unwrap();
}

#[tokio::test]
async fn status_reports_backlog_ages_and_reasons() {
    // GIVEN an order event written an hour ago and never published, an invoice waiting out a
    // backoff with a later invoice of the same aggregate blocked behind it, a payment written
    // an hour ago whose backoff ended a minute ago, a dead invoice and a dispatched order
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let old = insert_event(&client, "order", "o-1", "created", serde_json::json!({})).await;
    let backoff = insert_event(&client, "invoice", "i-1", "issued", serde_json::json!({})).await;
    insert_event(&client, "invoice", "i-1", "paid", serde_json::json!({})).await;
    let retried = insert_event(&client, "payment", "p-1", "made", serde_json::json!({})).await;
    let dead = insert_event(&client, "invoice", "i-2", "issued", serde_json::json!({})).await;
    let done = insert_event(&client, "order", "o-2", "created", serde_json::json!({})).await;
    exec(
        &client,
        &format!(
            "UPDATE outbox_events SET created_at = now() - interval '1 hour',
                    available_at = now() - interval '1 hour' WHERE id = '{old}';
             UPDATE outbox_events SET attempts = 2, last_error = 'unroutable: NO_ROUTE',
                    available_at = now() + interval '10 minutes' WHERE id = '{backoff}';
             UPDATE outbox_events SET created_at = now() - interval '1 hour', attempts = 1,
                    last_error = 'nacked', available_at = now() - interval '1 minute'
              WHERE id = '{retried}';
             UPDATE outbox_events SET status = 'dead', attempts = 10,
                    last_error = 'rejected: bad' WHERE id = '{dead}';
             UPDATE outbox_events SET status = 'dispatched', dispatched_at = now()
              WHERE id = '{done}';"
        ),
    )
    .await;

    // WHEN status --json runs
    let v = status_json(&db);

    // THEN counts are right
    assert_eq!(v["pending"], 4, "{v}");
    assert_eq!(v["retrying"], 1, "{v}");
    assert_eq!(v["blocked"], 1, "{v}");
    assert_eq!(v["dead"], 1, "{v}");
    assert_eq!(v["dispatched"], 1, "{v}");
    // AND the oldest pending event is the hour-old order, which has also been due for an hour
    let oldest = v["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((3590.0..3700.0).contains(&oldest), "{oldest}");
    let eligible = v["oldest_eligible_age_seconds"].as_f64().unwrap();
    assert!((3590.0..3700.0).contains(&eligible), "{eligible}");
    // AND per type: the payment counts as due since its backoff ended, not since it was
    // written; the invoice in backoff and the one behind it are not eligible at all
    let by_type = &v["by_aggregate_type"];
    let payment_eligible = by_type["payment"]["oldest_eligible_age_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        (50.0..600.0).contains(&payment_eligible),
        "{payment_eligible}"
    );
    assert_eq!(by_type["invoice"]["pending"], 2);
    assert_eq!(by_type["invoice"]["retrying"], 1);
    assert_eq!(by_type["invoice"]["blocked"], 1);
    assert_eq!(by_type["invoice"]["dead"], 1);
    assert!(by_type["invoice"]["oldest_eligible_age_seconds"].is_null());
    assert!(by_type["invoice"]["oldest_pending_age_seconds"].is_f64());
    assert_eq!(by_type["order"]["pending"], 1);
    assert_eq!(by_type["order"]["dead"], 0);
    // AND what happens next: the retry in about ten minutes
    let next = v["next_retry_in_seconds"].as_f64().unwrap();
    assert!(next > 500.0 && next <= 600.0, "{next}");
    assert!(v["next_retry_at"].as_str().unwrap().ends_with('Z'));
    // AND the failure reasons of pending and dead events
    let reasons: Vec<(String, String, i64)> = v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["status"].as_str().unwrap().to_owned(),
                f["reason"].as_str().unwrap().to_owned(),
                f["events"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(reasons.contains(&("pending".into(), "unroutable: NO_ROUTE".into(), 1)));
    assert!(reasons.contains(&("pending".into(), "nacked".into(), 1)));
    assert!(reasons.contains(&("dead".into(), "rejected: bad".into(), 1)));

    // AND the text form says the same, including what happens next
    let (code, text, _) = run(relay_cmd(&db).arg("status"));
    assert_eq!(code, 0);
    for needle in [
        "invoice",
        "rejected: bad",
        "wait out a retry backoff; next retry in",
        "1 event(s) wait for an earlier event of the same aggregate",
        "1 dead event(s) stay dead until replayed",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    // AND --max-age turns the oldest pending age into an exit code
    let (code, _, stderr) = run(relay_cmd(&db).args(["status", "--max-age", "5m"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--max-age"), "{stderr}");
    let (code, _, _) = run(relay_cmd(&db).args(["status", "--json", "--max-age", "2h"]));
    assert_eq!(code, 0);
    let (code, _, stderr) = run(relay_cmd(&db).args(["status", "--max-age", "soon"]));
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn status_with_nothing_pending_reports_null_ages() {
    // GIVEN an empty outbox WHEN status runs THEN counts are 0 and ages null
    let db = TestDb::migrated().await;
    let v = status_json(&db);
    assert_eq!(v["pending"], 0);
    assert_eq!(v["dead"], 0);
    assert_eq!(v["dispatched"], 0);
    assert!(v["oldest_pending_age_seconds"].is_null());
    assert!(v["oldest_eligible_age_seconds"].is_null());
    assert!(v["next_retry_in_seconds"].is_null());
    assert_eq!(v["by_aggregate_type"], serde_json::json!({}));
    // AND --max-age passes: nothing is old
    let (code, text, _) = run(relay_cmd(&db).args(["status", "--max-age", "1s"]));
    assert_eq!(code, 0);
    assert!(text.contains("nothing to do"), "{text}");
}

#[tokio::test]
async fn commands_on_a_missing_table_say_run_migrate() {
    // GIVEN a database without the outbox table
    let db = TestDb::empty().await;
    for args in [
        vec!["status"],
        vec!["dead", "list"],
        vec!["replay", "--all-dead"],
        vec!["purge", "--older-than", "1d"],
    ] {
        // WHEN an operator command runs THEN one line says to run migrate, exit 1
        let (code, _, stderr) = run(relay_cmd(&db).args(&args));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains("outbox-relay migrate"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[tokio::test]
async fn unreachable_database_is_a_one_line_error() {
    let db = TestDb::empty().await;
    for args in [vec!["status", "--json"], vec!["dead", "list"]] {
        let (code, stdout, stderr) = run(relay_cmd(&db)
            .env(
                "OUTBOX_RELAY_DATABASE__URL",
                "postgres://postgres@127.0.0.1:1/none?connect_timeout=2",
            )
            .args(&args));
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("OUTBOX_RELAY_DATABASE__URL"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let db = TestDb::migrated().await;
    for args in [
        vec!["replay"],
        vec!["replay", "--id", "not-a-uuid"],
        vec!["replay", "--aggregate-type", "order"],
        vec![
            "replay",
            "--all-dead",
            "--id",
            "00000000-0000-0000-0000-000000000000",
        ],
        vec!["replay", "--all-dead", "--since", "yesterday-ish"],
        vec![
            "replay",
            "--id",
            "00000000-0000-0000-0000-000000000000",
            "--since",
            "1h",
        ],
        vec!["dead", "list", "--limit", "-1"],
        vec!["dead"],
        vec!["purge"],
    ] {
        let (code, _, stderr) = run(relay_cmd(&db).args(&args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}");
    }
}

/// True once the relay announced that it sleeps until notified (sleepers > wakers).
async fn relay_asleep(client: &Client) -> bool {
    let row = client
        .query_one(
            "SELECT (SELECT last_value FROM outbox_events_sleepers) \
                  > (SELECT last_value FROM outbox_events_wakers)",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_events_are_listed_replayed_and_then_delivered() {
    // GIVEN four dead events of two aggregate types, one of them written three hours ago
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let a = insert_event(&client, "order", "o-1", "created", serde_json::json!({})).await;
    let b = insert_event(&client, "order", "o-2", "created", serde_json::json!({})).await;
    let c = insert_event(&client, "invoice", "i-1", "issued", serde_json::json!({})).await;
    let d = insert_event(&client, "invoice", "i-2", "issued", serde_json::json!({})).await;
    exec(
        &client,
        &format!(
            "UPDATE outbox_events SET status = 'dead', attempts = 10,
                    last_error = 'unroutable: NO_ROUTE';
             UPDATE outbox_events SET created_at = now() - interval '3 hours' WHERE id = '{d}';"
        ),
    )
    .await;

    // WHEN listing them
    let (code, stdout, _) = run(relay_cmd(&db).args(["dead", "list", "--json"]));
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();

    // THEN all four come in write order with their details
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![a.to_string(), b.to_string(), c.to_string(), d.to_string()]
    );
    assert_eq!(listed[0]["aggregate_type"], "order");
    assert_eq!(listed[0]["aggregate_id"], "o-1");
    assert_eq!(listed[0]["event_type"], "created");
    assert_eq!(listed[0]["attempts"], 10);
    assert_eq!(listed[0]["last_error"], "unroutable: NO_ROUTE");
    assert!(listed[0]["created_at"].as_str().unwrap().ends_with('Z'));
    // AND the filters apply
    let (_, stdout, _) = run(relay_cmd(&db).args([
        "dead",
        "list",
        "--json",
        "--aggregate-type",
        "invoice",
        "--limit",
        "1",
    ]));
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], c.to_string());
    let (_, text, _) = run(relay_cmd(&db).args(["dead", "list"]));
    assert!(
        text.contains(&a.to_string()) && text.contains("unroutable: NO_ROUTE"),
        "{text}"
    );

    // GIVEN a relay that has nothing to do and sleeps until notified (no fallback poll
    // within the test)
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.relay.poll_interval = Duration::from_secs(3600);
    let relay = start_relay(&config);
    eventually("relay asleep", || relay_asleep(&client)).await;

    // WHEN one event is replayed by id
    let (code, stdout, stderr) = run(relay_cmd(&db).args(["replay", "--id", &a.to_string()]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("replayed 1 event(s)"), "{stdout}");
    // THEN the replay is logged with the event's identity
    assert!(
        stderr.contains(&a.to_string()) && stderr.contains("o-1") && stderr.contains("replayed"),
        "{stderr}"
    );
    // AND the relay is woken and delivers it
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, a.to_string());

    // WHEN the dead invoices written in the last hour are replayed
    let (code, stdout, _) = run(relay_cmd(&db).args([
        "replay",
        "--all-dead",
        "--aggregate-type",
        "invoice",
        "--since",
        "1h",
    ]));
    assert_eq!(code, 0);
    assert!(stdout.contains("replayed 1 event(s)"), "{stdout}");
    // THEN only that one is delivered
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, c.to_string());
    eventually("replayed events dispatched", || async {
        db.count(&client, "dispatched").await == 2
    })
    .await;

    // AND an id that is not dead is left alone and reported
    let (code, stdout, stderr) =
        run(relay_cmd(&db).args(["replay", "--id", &a.to_string(), "--id", &b.to_string()]));
    assert_eq!(code, 0);
    assert!(stdout.contains("replayed 1 event(s)"), "{stdout}");
    assert!(
        stderr.contains("1 of the given IDs are not dead"),
        "{stderr}"
    );
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, b.to_string());

    // AND --since takes an RFC 3339 time: the three-hour-old invoice is older than it
    let since =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(3600))
            .to_string();
    let (_, stdout, _) = run(relay_cmd(&db).args(["replay", "--all-dead", "--since", &since]));
    assert!(stdout.contains("replayed 0 event(s)"), "{stdout}");
    let row = client
        .query_one(
            "SELECT status, attempts FROM outbox_events WHERE id = $1",
            &[&d],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("dead".to_owned(), 10)
    );
    eventually("replayed events dispatched", || async {
        db.count(&client, "dispatched").await == 3
    })
    .await;
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn replay_resets_attempts_and_keeps_the_last_error() {
    // GIVEN a dead event
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let id = insert_event(&client, "order", "o-1", "created", serde_json::json!({})).await;
    exec(
        &client,
        "UPDATE outbox_events SET status = 'dead', attempts = 7, last_error = 'too_large',
                available_at = now() + interval '1 day'",
    )
    .await;

    // WHEN it is replayed
    let (code, _, stderr) = run(relay_cmd(&db).args(["replay", "--all-dead"]));
    assert_eq!(code, 0, "{stderr}");

    // THEN it is pending, due now, attempts 0, and the reason it died is kept
    let row = client
        .query_one(
            "SELECT status, attempts, last_error, available_at <= now() FROM outbox_events \
             WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 0);
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("too_large")
    );
    assert!(row.get::<_, bool>(3));
    // AND status does not count it as a current failure (attempts are 0)
    let v = status_json(&db);
    assert_eq!(v["failures"], serde_json::json!([]), "{v}");
}

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
    exec(
        &client,
        "INSERT INTO outbox_events
             (aggregate_type, aggregate_id, event_type, payload, attempts, last_error,
              created_at, available_at)
         VALUES ('order', 'o-1', 'created', '{}', 1, 'nacked',
                 now() - interval '10 minutes', now() + interval '1 hour')",
    )
    .await;
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
    let pending_age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("outbox_oldest_pending_age_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pending_age >= 600.0, "{pending_age}");
    // AND the liveness probe does not call that wedged
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    // AND status explains it
    let v = status_json(&db);
    assert_eq!(
        (v["retrying"].as_i64(), v["blocked"].as_i64()),
        (Some(1), Some(1))
    );

    // WHEN the backoff ends
    exec(
        &client,
        "UPDATE outbox_events SET available_at = now() WHERE aggregate_id = 'o-1' AND attempts = 1",
    )
    .await;

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
    let pg = url::Url::parse(&pg_server()).unwrap();
    let target = format!(
        "{}:{}",
        pg.host_str().unwrap_or("127.0.0.1"),
        pg.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(target.parse().unwrap()).await;
    let mut config = relay_config(&db, &broker);
    config.database.url = format!("postgres://postgres@{}/{}", proxy.addr, db.name)
        .parse()
        .unwrap();
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
