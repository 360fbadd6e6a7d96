//! The operator commands against real services, through the real binary: `status` (counts,
//! ages, reasons, what happens next, `--max-age`), `dead list` and `replay` (a replayed event
//! wakes a sleeping relay and is delivered), their errors and exit codes. Retention and
//! `purge` are in tests/retention.rs; the commands against a database that refuses them in
//! tests/connection_storm.rs.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    process::{relay_binary_on, run, status_json},
    *,
};
use tokio_postgres::Client;

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
    let v = status_json(&db.url);

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
    let (code, text, _) = run(relay_binary_on(&db.url).arg("status"));
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
    let (code, _, stderr) = run(relay_binary_on(&db.url).args(["status", "--max-age", "5m"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--max-age"), "{stderr}");
    let (code, _, _) = run(relay_binary_on(&db.url).args(["status", "--json", "--max-age", "2h"]));
    assert_eq!(code, 0);
    let (code, _, stderr) = run(relay_binary_on(&db.url).args(["status", "--max-age", "soon"]));
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn status_with_nothing_pending_reports_null_ages() {
    // GIVEN an empty outbox WHEN status runs THEN counts are 0 and ages null
    let db = TestDb::migrated().await;
    let v = status_json(&db.url);
    assert_eq!(v["pending"], 0);
    assert_eq!(v["dead"], 0);
    assert_eq!(v["dispatched"], 0);
    assert!(v["oldest_pending_age_seconds"].is_null());
    assert!(v["oldest_eligible_age_seconds"].is_null());
    assert!(v["next_retry_in_seconds"].is_null());
    assert_eq!(v["by_aggregate_type"], serde_json::json!({}));
    // AND --max-age passes: nothing is old
    let (code, text, _) = run(relay_binary_on(&db.url).args(["status", "--max-age", "1s"]));
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
        let (code, _, stderr) = run(relay_binary_on(&db.url).args(&args));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains("outbox-relay migrate"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[tokio::test]
async fn unreachable_database_is_a_one_line_error() {
    let db = TestDb::empty().await;
    for args in [vec!["status", "--json"], vec!["dead", "list"]] {
        let (code, stdout, stderr) = run(relay_binary_on(&db.url)
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
        let (code, _, stderr) = run(relay_binary_on(&db.url).args(&args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}");
    }
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
    let (code, stdout, _) = run(relay_binary_on(&db.url).args(["dead", "list", "--json"]));
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
    let (_, stdout, _) = run(relay_binary_on(&db.url).args([
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
    let (_, text, _) = run(relay_binary_on(&db.url).args(["dead", "list"]));
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
    eventually("relay asleep", || relay_sleeps(&client)).await;

    // WHEN one event is replayed by id
    let (code, stdout, stderr) =
        run(relay_binary_on(&db.url).args(["replay", "--id", &a.to_string()]));
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
    let (code, stdout, _) = run(relay_binary_on(&db.url).args([
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
    let (code, stdout, stderr) = run(relay_binary_on(&db.url).args([
        "replay",
        "--id",
        &a.to_string(),
        "--id",
        &b.to_string(),
    ]));
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
    let (_, stdout, _) =
        run(relay_binary_on(&db.url).args(["replay", "--all-dead", "--since", &since]));
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
    let (code, _, stderr) = run(relay_binary_on(&db.url).args(["replay", "--all-dead"]));
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
    let v = status_json(&db.url);
    assert_eq!(v["failures"], serde_json::json!([]), "{v}");
}
