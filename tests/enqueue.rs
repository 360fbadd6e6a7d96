//! The producer function `<table>_enqueue` (migration V3) and `outbox_relay::store::enqueue`:
//! concurrent writers of one aggregate commit in `seq` order without any locking of their own
//! (plain INSERTs do not: the first test shows the broken order), and a producer role needs
//! exactly USAGE on the schema, INSERT on the table and EXECUTE on the function.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use outbox_relay::{
    config::TableName,
    event::NewEvent,
    store::{StoreError, enqueue, migrate::migrate},
};
use rand::Rng;
use tokio_postgres::{Client, error::SqlState};
use uuid::Uuid;

/// How a test producer writes an event.
#[derive(Clone, Copy)]
enum Write {
    /// A plain INSERT with no lock: what a producer that forgets to lock does.
    PlainInsert,
    /// `outbox_relay::store::enqueue`, i.e. the `outbox_events_enqueue` function.
    Enqueue,
}

async fn write(client: &Client, how: Write, aggregate_id: &str, event_type: &str) -> Uuid {
    match how {
        Write::PlainInsert => {
            insert_event(
                client,
                "order",
                aggregate_id,
                event_type,
                serde_json::json!({}),
            )
            .await
        }
        Write::Enqueue => enqueue(
            client,
            &TableName::parse("outbox_events").unwrap(),
            &event(aggregate_id, event_type),
        )
        .await
        .unwrap(),
    }
}

fn event(aggregate_id: &str, event_type: &str) -> NewEvent {
    NewEvent {
        aggregate_type: "order".into(),
        aggregate_id: aggregate_id.into(),
        event_type: event_type.into(),
        payload: serde_json::json!({"step": event_type}),
        ..Default::default()
    }
}

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A migrated database, a catch-all queue being consumed and a relay.
async fn running_relay() -> (
    TestDb,
    TestBroker,
    tokio::sync::mpsc::UnboundedReceiver<Received>,
    RunningRelay,
) {
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let rx = broker.consume().await;
    let relay = start_relay(&relay_config(&db, &broker));
    (db, broker, rx, relay)
}

async fn seq_of(client: &Client, id: Uuid) -> i64 {
    client
        .query_one("SELECT seq FROM outbox_events WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_inserts_let_a_later_seq_overtake_an_open_transaction() {
    // GIVEN a running relay
    let (db, broker, mut rx, relay) = running_relay().await;
    let (a, b) = (db.client().await, db.client().await);

    // WHEN transaction A inserts an event for X and stays open, and transaction B inserts the
    // next event for X and commits
    a.batch_execute("BEGIN").await.unwrap();
    let first = write(&a, Write::PlainInsert, "X", "first").await;
    b.batch_execute("BEGIN").await.unwrap();
    let second = write(&b, Write::PlainInsert, "X", "second").await;
    b.batch_execute("COMMIT").await.unwrap();

    // THEN the relay publishes B's event while A is still open (A's row is invisible) ...
    let got = receive_n(&mut rx, 1).await;
    assert_eq!(got[0].message_id, second.to_string());
    // ... and A's event, the earlier seq, after it: the order the README warns about
    a.batch_execute("COMMIT").await.unwrap();
    let got = receive_n(&mut rx, 1).await;
    assert_eq!(got[0].message_id, first.to_string());
    assert!(seq_of(&a, first).await < seq_of(&a, second).await);

    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_makes_the_second_writer_wait_so_order_holds() {
    // GIVEN a running relay
    let (db, broker, mut rx, relay) = running_relay().await;
    let (a, b) = (db.client().await, db.client().await);
    let b_pid = backend_pid(&b).await;

    // WHEN transaction A enqueues an event for X and stays open, and transaction B enqueues
    // the next event for X
    a.batch_execute("BEGIN").await.unwrap();
    let first = write(&a, Write::Enqueue, "X", "first").await;
    let writer_b = tokio::spawn(async move {
        b.batch_execute("BEGIN").await.unwrap();
        let id = write(&b, Write::Enqueue, "X", "second").await;
        b.batch_execute("COMMIT").await.unwrap();
        id
    });

    // THEN B waits on X's advisory lock while A is open
    eventually("B waits on the aggregate's advisory lock", || async {
        a.query_one(
            "SELECT coalesce(bool_or(wait_event_type = 'Lock' AND wait_event = 'advisory'), false) \
             FROM pg_stat_activity WHERE pid = $1",
            &[&b_pid],
        )
        .await
        .unwrap()
        .get(0)
    })
    .await;
    assert!(!writer_b.is_finished());

    // AND once A commits, B goes on, gets the later seq and is published after A
    a.batch_execute("COMMIT").await.unwrap();
    let second = writer_b.await.unwrap();
    let got = receive_n(&mut rx, 2).await;
    let order: Vec<&str> = got.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(order, [first.to_string(), second.to_string()]);
    assert!(seq_of(&a, first).await < seq_of(&a, second).await);

    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_producers_keep_every_aggregate_in_write_order() {
    // GIVEN a running relay
    let (db, broker, mut rx, relay) = running_relay().await;

    // WHEN 16 producers write 2,000 events over 20 aggregates with the function, one event
    // per transaction, each sleeping a random 0-20 ms before its commit (so a later writer
    // would often commit first if nothing serialized them)
    const PRODUCERS: usize = 16;
    const EVENTS: usize = 2_000;
    const AGGREGATES: usize = 20;
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let url = db.url.clone();
        producers.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            for i in 0..EVENTS / PRODUCERS {
                let aggregate = format!("agg-{}", (i * PRODUCERS + p) % AGGREGATES);
                let tx = client.transaction().await.unwrap();
                enqueue(
                    &tx,
                    &TableName::parse("outbox_events").unwrap(),
                    &event(&aggregate, &format!("p{p}-{i}")),
                )
                .await
                .unwrap();
                let pause = rand::rng().random_range(0..=20);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }

    // THEN every event arrives once, and each aggregate's events arrive in seq order
    let messages = receive_n(&mut rx, EVENTS).await;
    let client = db.client().await;
    let seqs = db.seqs(&client).await;
    assert_eq!(seqs.len(), EVENTS);
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &messages {
        let aggregate = m.header("x-aggregate-id").unwrap().to_owned();
        let seq = seqs[&m.message_id];
        let prev = last.insert(aggregate.clone(), seq).unwrap_or(0);
        assert!(
            seq > prev,
            "aggregate {aggregate}: seq {seq} arrived after {prev}"
        );
    }
    assert_eq!(last.len(), AGGREGATES);

    relay.stop().await;
    broker.cleanup().await;
}

/// Roles created for one test, dropped after its database (declare before the `TestDb`).
struct TestRoles(Vec<String>);

impl Drop for TestRoles {
    fn drop(&mut self) {
        admin_execute_blocking(format!("DROP ROLE IF EXISTS {}", self.0.join(", ")));
    }
}

#[tokio::test]
async fn a_producer_role_needs_execute_on_the_function() {
    // GIVEN a schema-qualified outbox table `app.events` (so its function is
    // `app.events_enqueue`), a producer role with USAGE on the schema, INSERT on the table and
    // EXECUTE on the function, and a role with the same grants but EXECUTE
    let id = Uuid::new_v4().simple().to_string();
    let (producer, other) = (format!("producer_{id}"), format!("noexec_{id}"));
    let _roles = TestRoles(vec![producer.clone(), other.clone()]);
    let db = TestDb::empty().await;
    let table = TableName::parse("app.events").unwrap();
    let mut client = db.client().await;
    migrate(&mut client, &table).await.unwrap();
    for role in [&producer, &other] {
        client
            .batch_execute(&format!(
                "CREATE ROLE {role} NOLOGIN; \
                 GRANT USAGE ON SCHEMA app TO {role}; \
                 GRANT INSERT ON app.events TO {role};"
            ))
            .await
            .unwrap();
    }
    client
        .batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION app.events_enqueue(text, text, text, jsonb, jsonb, uuid) \
             TO {producer}"
        ))
        .await
        .unwrap();

    // WHEN the producer enqueues (with the default search_path)
    client
        .batch_execute(&format!("SET ROLE {producer}"))
        .await
        .unwrap();
    let written = enqueue(&client, &table, &event("42", "created"))
        .await
        .unwrap();

    // THEN the event is written with the returned id
    client.batch_execute("RESET ROLE").await.unwrap();
    let found: i64 = client
        .query_one("SELECT count(*) FROM app.events WHERE id = $1", &[&written])
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 1);

    // WHEN the role without EXECUTE tries (PUBLIC has no EXECUTE either)
    client
        .batch_execute(&format!("SET ROLE {other}"))
        .await
        .unwrap();
    let refused = enqueue(&client, &table, &event("42", "again")).await;

    // THEN it is refused for lack of privilege on the function
    let Err(StoreError::Postgres(error)) = refused else {
        panic!("enqueue without EXECUTE: {refused:?}")
    };
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let message = error.as_db_error().unwrap().message();
    assert!(message.contains("events_enqueue"), "{message}");
    client.batch_execute("RESET ROLE").await.unwrap();
}
