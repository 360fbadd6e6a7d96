//! Retention against real Postgres: `outbox-relay purge` and the relay's background purge
//! delete only dispatched rows older than the limit, in batches, never pending or dead ones;
//! concurrent purges (several replicas) split the work; `retention.dispatched = 0s` deletes
//! on dispatch.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{process::relay_binary_on, *};
use outbox_relay::store::retention;
use tokio_postgres::Client;

/// `old` dispatched rows two hours old, `fresh` dispatched now, and one pending and one dead
/// row written three hours ago.
async fn seed(client: &Client, old: i32, fresh: i32) {
    client
        .execute(
            "INSERT INTO outbox_events
                 (aggregate_type, aggregate_id, event_type, payload, status, dispatched_at)
             SELECT 'order', i::text, 'created', '{}', 'dispatched', now() - interval '2 hours'
             FROM generate_series(1, $1) i",
            &[&old],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO outbox_events
                 (aggregate_type, aggregate_id, event_type, payload, status, dispatched_at)
             SELECT 'order', i::text, 'created', '{}', 'dispatched', now()
             FROM generate_series(1, $1) i",
            &[&fresh],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload, created_at)
             VALUES ('order', 'p', 'created', '{}', now() - interval '3 hours');
             INSERT INTO outbox_events
                 (aggregate_type, aggregate_id, event_type, payload, status, created_at, dispatched_at)
             VALUES ('order', 'd', 'created', '{}', 'dead', now() - interval '3 hours',
                     now() - interval '3 hours');",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn purge_command_deletes_only_old_dispatched_rows_in_batches() {
    // GIVEN 2500 old dispatched rows, 5 fresh ones, an old pending and an old dead row, and a
    // batch size of 1000
    let db = TestDb::migrated().await;
    let client = db.client().await;
    seed(&client, 2500, 5).await;

    // WHEN purging rows older than an hour
    let out = relay_binary_on(&db.url)
        .env("OUTBOX_RELAY_RETENTION__BATCH_SIZE", "1000")
        .args(["purge", "--older-than", "1h"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // THEN exactly the old dispatched rows are gone, and the count is printed
    assert!(
        stdout.contains("purged 2500 dispatched event(s)"),
        "{stdout}"
    );
    assert_eq!(db.count(&client, "dispatched").await, 5);
    assert_eq!(db.count(&client, "pending").await, 1);
    assert_eq!(db.count(&client, "dead").await, 1);

    // AND a second run finds nothing; a bad duration is a usage error
    let out = relay_binary_on(&db.url)
        .args(["purge", "--older-than", "1h"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 0 "));
    let out = relay_binary_on(&db.url)
        .args(["purge", "--older-than", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn purge_batches_are_bounded_by_the_batch_size() {
    // GIVEN 25 old dispatched rows
    let db = TestDb::migrated().await;
    let client = db.client().await;
    seed(&client, 25, 0).await;

    // WHEN one batch of 10 runs THEN it deletes exactly 10
    let one = retention::purge_batch(&client, &db.table, Duration::from_secs(3600), 10)
        .await
        .unwrap();
    assert_eq!(one, 10);
    assert_eq!(db.count(&client, "dispatched").await, 15);

    // WHEN a full purge runs with batches of 10 THEN it stops after the short third batch,
    // having deleted the rest
    let rest = retention::purge(&client, &db.table, Duration::from_secs(3600), 10, |_| {})
        .await
        .unwrap();
    assert_eq!(rest, 15);
    assert_eq!(db.count(&client, "dispatched").await, 0);
    assert_eq!(db.count(&client, "pending").await, 1);
    assert_eq!(db.count(&client, "dead").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_purges_split_the_rows_without_waiting_or_double_counting() {
    // GIVEN 3000 old dispatched rows
    let db = TestDb::migrated().await;
    let seed_client = db.client().await;
    seed(&seed_client, 3000, 0).await;

    // WHEN three purgers (as on three replicas) run at once, in small batches
    let mut purgers = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let client = db.client().await;
        let table = db.table.clone();
        purgers.spawn(async move {
            retention::purge(&client, &table, Duration::from_secs(3600), 50, |_| {})
                .await
                .unwrap()
        });
    }
    let mut total = 0;
    while let Some(deleted) = purgers.join_next().await {
        total += deleted.unwrap();
    }

    // THEN every old row was deleted exactly once and nothing else was touched
    assert_eq!(total, 3000);
    assert_eq!(db.count(&seed_client, "dispatched").await, 0);
    assert_eq!(db.count(&seed_client, "pending").await, 1);
    assert_eq!(db.count(&seed_client, "dead").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_retention_purges_old_dispatched_rows() {
    // GIVEN 50 dispatched rows two hours old, an old pending one for an unbound routing key
    // (so it stays pending) and an old dead one, and a relay retaining dispatched rows for
    // one hour, purging often in batches of 7
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    broker.bind("order.*").await;
    let mut config = relay_config(&db, &broker);
    config.retention.dispatched = Duration::from_secs(3600);
    config.retention.interval = Duration::from_millis(50);
    config.retention.batch_size = 7;
    config.retry.initial_backoff = Duration::from_secs(3600);
    config.retry.max_backoff = Duration::from_secs(3600);
    let client = db.client().await;
    seed(&client, 50, 0).await;
    client
        .batch_execute(
            "UPDATE outbox_events SET aggregate_type = 'unbound' WHERE status = 'pending'",
        )
        .await
        .unwrap();
    let mut rx = broker.consume().await;
    let relay = start_relay(&config);

    // WHEN the relay also publishes a new event (dispatched now)
    let fresh = db.insert(&client, "o-1", "created").await;
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, fresh.to_string());

    // THEN the old dispatched rows go; the fresh dispatched, pending and dead rows stay
    // (the fresh one is marked after the consumer got it: wait for that first, or the last
    // old row of the purge's batches of 7 could be taken for it)
    eventually("fresh event marked", || async {
        client
            .query_one("SELECT status FROM outbox_events WHERE id = $1", &[&fresh])
            .await
            .unwrap()
            .get::<_, String>(0)
            == "dispatched"
    })
    .await;
    eventually("old rows purged", || async {
        db.count(&client, "dispatched").await == 1
    })
    .await;
    let kept = client
        .query_opt("SELECT 1 FROM outbox_events WHERE id = $1", &[&fresh])
        .await
        .unwrap();
    assert!(kept.is_some(), "the fresh dispatched row was purged");
    assert_eq!(db.count(&client, "pending").await, 1);
    assert_eq!(db.count(&client, "dead").await, 1);
    // AND outbox_retention_deleted_total counts the 50 purged rows (the counter follows
    // the DELETE's commit)
    eventually("50 deletions counted", || async {
        relay
            .metrics
            .render()
            .contains("outbox_retention_deleted_total 50\n")
    })
    .await;
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_retention_deletes_on_dispatch_and_purges_leftovers() {
    // GIVEN rows left dispatched from before retention was set to 0s
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO outbox_events
                 (aggregate_type, aggregate_id, event_type, payload, status, dispatched_at)
             SELECT 'order', i::text, 'created', '{}', 'dispatched', now() - interval '1 minute'
             FROM generate_series(1, 20) i",
        )
        .await
        .unwrap();
    let mut config = relay_config(&db, &broker);
    config.retention.dispatched = Duration::ZERO;
    config.retention.interval = Duration::from_millis(50);

    // WHEN a relay with retention 0s publishes ten events
    let relay = start_relay(&config);
    for i in 0..10 {
        db.insert(&client, &format!("o-{i}"), "created").await;
    }
    receive_n(&mut rx, 10).await;

    // THEN the table ends empty: published rows deleted on dispatch, leftovers purged
    eventually("table empty", || async {
        let n: i64 = client
            .query_one("SELECT count(*) FROM outbox_events", &[])
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    relay.stop().await;
    broker.cleanup().await;
}
