//! End-to-end relay behaviour against real Postgres and RabbitMQ: the message contract,
//! notify wake-ups, rolled-back transactions, per-aggregate order, retries and dead events.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_event_with_the_message_contract() {
    // GIVEN a migrated database, an exchange with a catch-all queue and a running relay
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let relay = start_relay(&relay_config(&db, &broker));
    let client = db.client().await;

    // WHEN an application writes events, one with headers
    let traced: uuid::Uuid = client
        .query_one(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ('order', 'o-1', 'created', '{\"total\": 10, \"items\": [1, 2]}', \
                     '{\"traceparent\": \"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\", \"tenant\": \"acme\"}') \
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut ids = vec![traced];
    for i in 0..20 {
        ids.push(
            db.insert(&client, &format!("o-{}", i % 5), &format!("e{i}"))
                .await,
        );
    }

    // THEN every event arrives once with id, body, headers and routing key
    let messages = receive_n(&mut rx, ids.len()).await;
    let mut got: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
    got.sort();
    let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    want.sort();
    assert_eq!(got, want);

    let first = messages
        .iter()
        .find(|m| m.message_id == traced.to_string())
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(body, serde_json::json!({"total": 10, "items": [1, 2]}));
    assert_eq!(first.routing_key, "order.created");
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.kind.as_deref(), Some("created"));
    assert_eq!(first.delivery_mode, Some(2));
    assert!(first.timestamp.unwrap() > 1_700_000_000);
    assert_eq!(
        first.header("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(first.header("tenant"), Some("acme"));
    assert_eq!(first.header("x-aggregate-type"), Some("order"));
    assert_eq!(first.header("x-aggregate-id"), Some("o-1"));
    assert_eq!(first.header("x-event-type"), Some("created"));
    // AND every message carries its row's seq as the long-long integer header `x-seq`
    let seqs = db.seqs(&client).await;
    for m in &messages {
        assert_eq!(
            m.seq,
            Some(seqs[&m.message_id]),
            "x-seq of {}",
            m.message_id
        );
    }

    // AND the rows are marked dispatched with a timestamp
    eventually("all rows dispatched", || async {
        db.count(&client, "dispatched").await == ids.len() as i64
    })
    .await;
    let undated: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox_events WHERE dispatched_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(undated, 0);

    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_relay_long_before_the_poll_interval() {
    // GIVEN a relay whose fallback poll is an hour away and that has gone to sleep
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    // No coordination ticks either: only a NOTIFY can wake this relay.
    let mut config = notify_only_config(&db, &broker);
    config.relay.linger = Duration::from_millis(10);
    let relay = start_relay(&config);
    let client = db.client().await;

    for round in 0..3 {
        wait_until_asleep(&client).await;
        // WHEN one event is committed
        let id = db.insert(&client, "agg", &format!("round{round}")).await;
        // THEN it is delivered (only a NOTIFY can have woken the relay)
        let got = receive_n(&mut rx, 1).await;
        assert_eq!(got[0].message_id, id.to_string());
    }
    relay.stop().await;
    broker.cleanup().await;
}

/// Waits until a relay has announced that it sleeps (producers will notify).
async fn wait_until_asleep(client: &tokio_postgres::Client) {
    eventually("relay announced sleep", || relay_sleeps(client)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_events_are_never_published() {
    // GIVEN a running relay
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let relay = start_relay(&relay_config(&db, &broker));
    let mut client = db.client().await;

    // WHEN a transaction writes events and rolls back, then another commits
    let tx = client.transaction().await.unwrap();
    for i in 0..5 {
        tx.execute(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('order', 'rb', $1, '{}')",
            &[&format!("rolled-back-{i}")],
        )
        .await
        .unwrap();
    }
    tx.rollback().await.unwrap();
    let committed = db.insert(&client, "rb", "committed").await;

    // THEN only the committed event arrives (the rolled-back ones had lower seq and would
    // have come first), and the table holds only it
    let got = receive_n(&mut rx, 1).await;
    assert_eq!(got[0].message_id, committed.to_string());
    eventually("committed row dispatched", || async {
        db.count(&client, "dispatched").await == 1
    })
    .await;
    let total: i64 = client
        .query_one("SELECT count(*) FROM outbox_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 1);
    assert!(rx.try_recv().is_err());
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_aggregate_order_holds_with_concurrent_producers() {
    // GIVEN a relay with small batches (many batches and waves in flight)
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.relay.batch_size = 7;
    let relay = start_relay(&config);
    let setup = db.client().await;
    setup
        .batch_execute("CREATE TABLE counters (aggregate_id text PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();

    // WHEN 4 producers write 150 events each over 12 shared aggregates, serializing writes per
    // aggregate with a row lock as the README asks applications to do
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 150;
    let mut handles = Vec::new();
    for p in 0..PRODUCERS {
        let url = db.url.clone();
        handles.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            for i in 0..PER_PRODUCER {
                let aggregate = format!("agg-{}", (i * 7 + p) % 12);
                let tx = client.transaction().await.unwrap();
                let n: i32 = tx
                    .query_one(
                        "INSERT INTO counters VALUES ($1, 1) ON CONFLICT (aggregate_id) \
                         DO UPDATE SET n = counters.n + 1 RETURNING n",
                        &[&aggregate],
                    )
                    .await
                    .unwrap()
                    .get(0);
                tx.execute(
                    "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('order', $1, 'step', jsonb_build_object('n', $2::int))",
                    &[&aggregate, &n],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }

    // THEN every aggregate's events arrive as 1, 2, 3, ... with no gap or swap
    let messages = receive_n(&mut rx, PRODUCERS * PER_PRODUCER).await;
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for m in &messages {
        let aggregate = m.header("x-aggregate-id").unwrap().to_owned();
        let n = serde_json::from_str::<serde_json::Value>(&m.body).unwrap()["n"]
            .as_i64()
            .unwrap();
        let prev = last.insert(aggregate.clone(), n).unwrap_or(0);
        assert_eq!(n, prev + 1, "aggregate {aggregate}: {n} after {prev}");
    }
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_producer_on_one_hot_aggregate_leaves_nothing_for_a_rescan() {
    // GIVEN a running relay that has published a first event (it owns its buckets), with
    // coordination ticks an hour away: a tick delayed past the lease on a loaded machine
    // would hand buckets back and forth, and events skipped meanwhile come back as gaps
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.relay.rebalance_interval = Duration::from_secs(3600);
    config.relay.lease_timeout = Duration::from_secs(7200);
    let relay = start_relay(&config);
    let client = db.client().await;
    db.insert(&client, "hot", "0").await;
    receive_n(&mut rx, 1).await;

    // WHEN one producer commits 3,000 events of that aggregate, one transaction after the
    // other (nothing commits late), while the relay reads, publishes and settles them
    const EVENTS: usize = 3_000;
    for i in 1..=EVENTS {
        db.insert(&client, "hot", &i.to_string()).await;
    }

    // THEN they arrive in order
    let messages = receive_n(&mut rx, EVENTS).await;
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.header("x-event-type"), Some((i + 1).to_string().as_str()));
    }
    // AND no read took an event for one behind an unread predecessor: a predecessor settled
    // while the read ran is gone from memory but not unread (the relay used to rescan for
    // those, about one event in 150 on this shape)
    assert_eq!(relay.metrics.read_gaps.get(), 0);
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_aggregate_is_retried_while_others_flow_then_delivered_in_order() {
    // GIVEN a queue bound only for orders
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    broker.bind("order.*").await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.retry.max_attempts = 1000;
    let relay = start_relay(&config);
    let client = db.client().await;

    // WHEN an invoice aggregate (unroutable) and orders are written
    let inv1 = insert_event(
        &client,
        "invoice",
        "inv-1",
        "issued",
        serde_json::json!({"n": 1}),
    )
    .await;
    let inv2 = insert_event(
        &client,
        "invoice",
        "inv-1",
        "paid",
        serde_json::json!({"n": 2}),
    )
    .await;
    let mut orders = Vec::new();
    for i in 0..10 {
        orders.push(db.insert(&client, &format!("o-{i}"), "created").await);
    }

    // THEN orders flow while the invoice is retried with backoff and its successor waits
    let got = receive_n(&mut rx, orders.len()).await;
    assert!(got.iter().all(|m| m.routing_key == "order.created"));
    eventually("invoice retried at least twice", || async {
        let row = client
            .query_one(
                "SELECT attempts, last_error, status FROM outbox_events WHERE id = $1",
                &[&inv1],
            )
            .await
            .unwrap();
        row.get::<_, i32>(0) >= 2
            && row
                .get::<_, Option<String>>(1)
                .is_some_and(|e| e.contains("unroutable"))
            && row.get::<_, String>(2) == "pending"
    })
    .await;
    let successor: (i32, String) = client
        .query_one(
            "SELECT attempts, status FROM outbox_events WHERE id = $1",
            &[&inv2],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        successor,
        (0, "pending".to_owned()),
        "successor must wait untried"
    );

    // WHEN a binding appears
    broker.bind("invoice.*").await;

    // THEN both invoice events arrive, in order
    let got = receive_n(&mut rx, 2).await;
    assert_eq!(got[0].message_id, inv1.to_string());
    assert_eq!(got[1].message_id, inv2.to_string());
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_goes_dead_after_max_attempts_and_stops_blocking() {
    // GIVEN only `order.ok` is routable and max_attempts = 3
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    broker.bind("order.ok").await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.retry.max_attempts = 3;
    let relay = start_relay(&config);
    let client = db.client().await;

    // WHEN an aggregate has a poison event followed by a good one
    let poison = db.insert(&client, "a-1", "poison").await;
    let good = db.insert(&client, "a-1", "ok").await;

    // THEN the poison event is dead after exactly 3 attempts with a reason, and the good one
    // is delivered after it
    let got = receive_n(&mut rx, 1).await;
    assert_eq!(got[0].message_id, good.to_string());
    let row = client
        .query_one(
            "SELECT status, attempts, last_error FROM outbox_events WHERE id = $1",
            &[&poison],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "dead");
    assert_eq!(row.get::<_, i32>(1), 3);
    assert!(row.get::<_, String>(2).contains("unroutable"));
    relay.stop().await;
    broker.cleanup().await;
}

/// One publish call with routable and unroutable events interleaved.
fn mixed_events(call: usize, n: usize) -> Vec<outbox_relay::event::OutboxEvent> {
    (0..n)
        .map(|i| outbox_relay::event::OutboxEvent {
            id: uuid::Uuid::new_v4(),
            seq: i as i64,
            aggregate_type: if i % 3 == 0 { "invoice" } else { "order" }.into(),
            aggregate_id: format!("a-{call}-{i}"),
            event_type: "created".into(),
            payload: "{}".into(),
            headers: vec![],
            created_at: std::time::SystemTime::now(),
            attempts: 0,
            bucket: 0,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_messages_are_blamed_on_their_own_events_not_on_a_neighbour() {
    use outbox_relay::broker::{PublishError, Publisher, rabbitmq::RabbitMqPublisher};
    // GIVEN a queue bound for orders only, and a publisher with two channels shared by four
    // concurrent calls (lapin hands a `basic.return` to whichever confirm completes next)
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    broker.bind("order.*").await;
    let config = relay_config(&db, &broker);
    let publisher = RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout)
        .unwrap()
        .with_channels(2);
    publisher.connect().await.unwrap();

    for round in 0..5 {
        // WHEN calls mixing invoices (unroutable) and orders run at once
        let calls: Vec<_> = (0..4).map(|c| mixed_events(round * 4 + c, 60)).collect();
        let results =
            futures::future::join_all(calls.iter().map(|events| publisher.publish(events))).await;

        // THEN exactly the invoices are unroutable, each naming its own routing key, and
        // every order is confirmed
        for (events, outcomes) in calls.iter().zip(results) {
            assert_eq!(outcomes.len(), events.len());
            for (event, outcome) in events.iter().zip(outcomes) {
                match (event.aggregate_type.as_str(), outcome) {
                    ("order", Ok(())) => {}
                    ("invoice", Err(PublishError::Unroutable(reason))) => {
                        assert!(reason.contains("routing key `invoice.created`"), "{reason}");
                    }
                    (kind, outcome) => panic!("{kind} event {} got {outcome:?}", event.id),
                }
            }
        }
    }
    publisher.close().await;
    broker.cleanup().await;
}

#[test]
fn a_config_built_in_code_is_validated_by_relay_new() {
    // GIVEN a configuration a program built without loading it, breaking a rule
    let mut config = outbox_relay::config::Config::default();
    config.relay.batch_size = 0;
    let publisher = outbox_relay::broker::rabbitmq::RabbitMqPublisher::new(
        &config.broker.rabbitmq,
        config.relay.publish_timeout,
    )
    .unwrap();

    // WHEN a relay is built from it THEN it is refused, naming the key
    let error = outbox_relay::relay::Relay::new(&config, publisher)
        .err()
        .expect("an invalid config is refused");
    assert!(error.to_string().contains("relay.batch_size"), "{error}");
}
