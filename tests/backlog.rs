//! Deep backlogs and the ordered read: the read's plan on an unanalyzed table, hot
//! aggregates through a small window and a small memory bound, rows found behind the cursor
//! (late commits, replays), a restart while an aggregate's head waits out a backoff, and
//! returns attributed exactly with the window full.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashMap, time::Duration};

use common::{
    TestBroker, TestDb,
    delivery::{check_first_deliveries, drain_queue},
    eventually,
    producers::insert_backlog,
    publisher::{Fault, Faulty},
    receive_n, relay_config, start_relay, start_relay_with,
};
use outbox_relay::{
    broker::rabbitmq::RabbitMqPublisher,
    config::TableName,
    store::{PLAN_SETTINGS, Queries},
};

/// The plan of the read, for a generic or a custom plan, on a loaded table never analyzed.
async fn read_plan(client: &tokio_postgres::Client, mode: &str, after: i64) -> String {
    let sql = Queries::new(&TableName::parse("outbox_events").unwrap()).read_pending;
    // As the relay runs it: in a transaction with its planner settings, prepared.
    client
        .batch_execute(&format!(
            "BEGIN; {PLAN_SETTINGS}; SET LOCAL plan_cache_mode = {mode}; DEALLOCATE ALL; \
             PREPARE r(int8, int8, int4[], int4) AS {sql}"
        ))
        .await
        .unwrap();
    let rows = client
        .query(
            &format!(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE r({after}, 500, \
                 '{{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31}}', 64)"
            ),
            &[],
        )
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_walks_the_pending_index_in_order_on_an_unanalyzed_table() {
    // GIVEN 100,000 pending rows over 100 hot aggregates, loaded in one statement and never
    // analyzed (as a backlog arrives between autovacuum runs), a third of them dispatched
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE outbox_events SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    insert_backlog(&client, "hot", 100, 1000).await;
    client
        .batch_execute(
            "UPDATE outbox_events SET status = 'dispatched', dispatched_at = now() \
             WHERE seq <= 33000",
        )
        .await
        .unwrap();

    // WHEN the read's plan is explained, as a generic and as a custom plan, at the start, in
    // the middle and near the end of the backlog
    for mode in ["force_generic_plan", "force_custom_plan"] {
        for after in [0, 50_000, 99_000] {
            let plan = read_plan(&client, mode, after).await;
            // THEN it is an ordered walk of the pending index that stops at the LIMIT (no
            // sort, no bitmap scan), and each returned row's predecessor is one backward
            // probe of the per-aggregate index
            assert!(
                plan.contains("Index Scan using outbox_events_pending_seq_idx"),
                "{mode} after {after}:\n{plan}"
            );
            assert!(
                plan.contains("Backward using outbox_events_pending_aggregate_idx"),
                "{mode} after {after}:\n{plan}"
            );
            for bad in ["Sort", "Bitmap", "Seq Scan"] {
                assert!(!plan.contains(bad), "{mode} after {after}:\n{plan}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_aggregates_through_a_small_window_and_memory_keep_order_and_lose_nothing() {
    // GIVEN 3,000 events over 6 aggregates, a window of 40, 3 publish calls and room for 250
    // events in memory (so the relay reads ahead, stops, and goes on as events are marked)
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let client = db.client().await;
    insert_backlog(&client, "hot", 6, 500).await;
    let mut config = relay_config(&db, &broker);
    config.relay.batch_size = 50;
    config.relay.max_in_flight = 40;
    config.relay.publish_channels = 3;
    config.relay.max_pending_in_memory = 250;
    config.relay.rescan_interval = Duration::from_millis(100);

    // WHEN the relay drains it
    let relay = start_relay(&config);
    eventually("backlog drained", || async {
        db.count(&client, "dispatched").await == 3000
    })
    .await;
    relay.stop().await;

    // THEN every event arrived once at least, each aggregate's first deliveries in order
    let messages = drain_queue(&broker).await;
    let mut last = HashMap::new();
    let deliveries = check_first_deliveries(&messages, &mut last);
    assert_eq!(deliveries.unique, 3000);
    assert!(last.values().all(|n| *n == 500), "{last:?}");
    assert_eq!(db.count(&client, "pending").await, 0);
    broker.cleanup().await;
}

/// An event of `aggregate` that waits out a backoff until `in_secs` from now.
async fn insert_in_backoff(client: &tokio_postgres::Client, aggregate: &str, in_secs: i32) {
    client
        .execute(
            "INSERT INTO outbox_events \
                 (aggregate_type, aggregate_id, event_type, payload, attempts, last_error, \
                  available_at) \
             VALUES ('order', $1, 'parked', '{\"n\": 1}', 1, 'nacked', \
                     now() + $2::int4 * interval '1 second')",
            &[&aggregate, &in_secs],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commits_and_replays_behind_the_cursor_are_found() {
    // GIVEN a relay that holds an event in a long backoff (so it holds something and its
    // cursor stays past the rows below)
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.relay.rescan_interval = Duration::from_millis(200);
    let client = db.client().await;
    insert_in_backoff(&client, "parked", 3600).await;
    let relay = start_relay(&config);

    // AND a producer transaction that takes a seq now but commits later
    let mut late_client = db.client().await;
    let late_tx = late_client.transaction().await.unwrap();
    let late: uuid::Uuid = late_tx
        .query_one(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('order', 'late', 'created', '{\"n\": 1}') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // AND a dead event
    let dead: uuid::Uuid = client
        .query_one(
            "INSERT INTO outbox_events \
                 (aggregate_type, aggregate_id, event_type, payload, status, attempts) \
             VALUES ('order', 'replayed', 'created', '{\"n\": 1}', 'dead', 10) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // AND later events that commit first and move the cursor past both
    let after = db.insert(&client, "after", "created").await;
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, after.to_string());

    // WHEN the late transaction commits and the dead event is replayed
    late_tx.commit().await.unwrap();
    client
        .execute(
            "UPDATE outbox_events SET status = 'pending', attempts = 0 WHERE id = $1",
            &[&dead],
        )
        .await
        .unwrap();

    // THEN both are published (found by a rescan behind the cursor)
    let got = receive_n(&mut rx, 2).await;
    let mut ids: Vec<String> = got.iter().map(|m| m.message_id.clone()).collect();
    ids.sort();
    let mut want = vec![late.to_string(), dead.to_string()];
    want.sort();
    assert_eq!(ids, want);
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_head_waits_out_a_backoff_does_not_let_its_successor_overtake() {
    // GIVEN a relay whose broker nacks the head of aggregate a-1 (backoff 2 s)
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.retry.initial_backoff = Duration::from_secs(2);
    config.retry.max_backoff = Duration::from_secs(2);
    let client = db.client().await;
    let head = db.insert(&client, "a-1", "first").await;
    let (publisher, fault) = Faulty::new(
        RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout).unwrap(),
    );
    *fault.lock().unwrap() = Fault::Nack([head].into_iter().collect());
    let first = start_relay_with(&config, publisher);
    eventually("the head failed once", || async {
        let attempts: i32 = client
            .query_one("SELECT attempts FROM outbox_events WHERE id = $1", &[&head])
            .await
            .unwrap()
            .get(0);
        attempts == 1
    })
    .await;

    // WHEN the relay restarts while the head waits, and a successor and another aggregate's
    // event are written
    first.stop().await;
    let successor = db.insert(&client, "a-1", "second").await;
    let other = db.insert(&client, "b-1", "first").await;
    let second = start_relay(&config);

    // THEN the other aggregate flows at once, and a-1's head goes before its successor
    let got = receive_n(&mut rx, 3).await;
    let order: Vec<String> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(order[0], other.to_string(), "{order:?}");
    assert_eq!(
        order[1..],
        [head.to_string(), successor.to_string()],
        "{order:?}"
    );
    second.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_window_full_returns_are_blamed_on_their_own_events() {
    // GIVEN only `order.*` is routable, attempts are fatal at once, and 600 events alternate
    // between routable orders and unroutable invoices over many aggregates
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    broker.bind("order.*").await;
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             SELECT CASE WHEN i % 2 = 0 THEN 'order' ELSE 'invoice' END, (i % 150)::text, \
                    'e', jsonb_build_object('n', i) \
             FROM generate_series(0, 599) i ORDER BY i",
            &[],
        )
        .await
        .unwrap();
    let mut config = relay_config(&db, &broker);
    config.retry.max_attempts = 1;
    config.relay.max_in_flight = 300;
    config.relay.publish_channels = 4;

    // WHEN the relay publishes them with the window full
    let relay = start_relay(&config);
    eventually("everything settled", || async {
        db.count(&client, "pending").await == 0
    })
    .await;
    relay.stop().await;

    // THEN every order is dispatched and delivered, every invoice is dead, none crossed over
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox_events WHERE \
             (aggregate_type = 'order' AND status <> 'dispatched') OR \
             (aggregate_type = 'invoice' AND status <> 'dead')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    let messages = drain_queue(&broker).await;
    assert_eq!(messages.len(), 300);
    assert!(
        messages
            .iter()
            .all(|m| m.header("x-aggregate-type") == Some("order"))
    );
    broker.cleanup().await;
}
