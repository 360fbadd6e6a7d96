//! Database trouble: killed connections reconnect (pool, LISTEN, coordination), a NOTIFY
//! still wakes the relay afterwards, and an outcome that could not be settled while the
//! database was away is settled when it is back.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{
    delivery::{check_first_deliveries, drain_queue},
    metrics::gauge,
    producers::Producer,
    proxy::postgres_proxy,
    publisher::{Fault, Faulty},
    *,
};
use outbox_relay::broker::rabbitmq::RabbitMqPublisher;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_reconnect_and_listen_again() {
    // GIVEN a relay that can only be woken by NOTIFY (poll and rebalance an hour away)
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = notify_only_config(&db, &broker);
    config.relay.linger = Duration::from_millis(10);
    let relay = start_relay(&config);
    let client = db.client().await;
    let admin = connect(&format!("{}/postgres", pg_server())).await;
    let first = db.insert(&client, "a", "first").await;
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, first.to_string());

    // WHEN Postgres terminates the relay's pool and LISTEN connections, twice
    for round in 0..2 {
        let listen_pid = listen_backend(&admin, &db.name).await;
        let killed = terminate_relay_connections(&admin, &db.name).await;
        assert!(killed >= 1, "round {round}: nothing terminated");
        // THEN a new LISTEN connection appears
        eventually("LISTEN re-established", || async {
            listen_backend(&admin, &db.name).await != listen_pid
        })
        .await;
        // AND a new event is delivered, which only a NOTIFY can trigger
        let id = db
            .insert(&client, "a", &format!("after-kill-{round}"))
            .await;
        assert_eq!(receive_n(&mut rx, 1).await[0].message_id, id.to_string());
    }
    eventually("rows settled", || async {
        db.count(&client, "dispatched").await == 3
    })
    .await;
    relay.stop().await;
    broker.cleanup().await;
}

/// The pid of the relay's LISTEN backend in `db` (0 if none).
async fn listen_backend(admin: &tokio_postgres::Client, db: &str) -> i32 {
    admin
        .query_one(
            "SELECT coalesce(max(pid), 0) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'outbox-relay' AND query LIKE 'LISTEN%'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_is_settled_after_the_database_comes_back() {
    // GIVEN a relay that reaches Postgres through a proxy, and a broker whose confirmed
    // outcomes are held back until we say so
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let (proxy, url_via_proxy) = postgres_proxy(&db.name).await;
    let mut config = relay_config(&db, &broker);
    config.database.url = url_via_proxy.parse().unwrap();
    let (publisher, fault) = Faulty::new(
        RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout).unwrap(),
    );
    let gate = Arc::new(tokio::sync::Notify::new());
    *fault.lock().unwrap() = Fault::HoldAfterConfirm(gate.clone());
    let relay = start_relay_with(&config, publisher);
    let client = db.client().await;

    // WHEN an event is confirmed by the broker and then the database goes away before the
    // relay could settle it
    let id = db.insert(&client, "s-1", "created").await;
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, id.to_string());
    proxy.cut();
    *fault.lock().unwrap() = Fault::None;
    gate.notify_one();

    // THEN the relay reports the database down and keeps the outcome
    eventually("database reported down", || async {
        relay.metrics.render().contains("outbox_database_up 0")
    })
    .await;
    assert_eq!(db.count(&client, "pending").await, 1);

    // WHEN the database is reachable again THEN the event ends dispatched (at-least-once:
    // a second delivery is allowed, loss is not)
    proxy.restore();
    eventually("event settled", || async {
        db.count(&client, "dispatched").await == 1
    })
    .await;
    eventually("database reported up", || async {
        relay.metrics.render().contains("outbox_database_up 1")
    })
    .await;
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_coordination_connection_stops_claiming_at_once() {
    // GIVEN relay A owning every bucket, which would not look at its ownership again for an
    // hour on its own, and relay B rebalancing every 100 ms (owning nothing while A holds
    // everything); a producer writes continuously and the broker is slow, so A always has
    // batches in flight
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut config = relay_config(&db, &broker);
    config.relay.batch_size = 20;
    let slow = |config: &outbox_relay::config::Config| {
        let (publisher, fault) = Faulty::new(
            RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout).unwrap(),
        );
        *fault.lock().unwrap() = Fault::Delay(Duration::from_millis(20));
        start_relay_with(config, publisher)
    };
    config.relay.rebalance_interval = Duration::from_secs(3600);
    config.relay.lease_timeout = Duration::from_secs(7200);
    let a = slow(&config);
    eventually("A owns every bucket", || async {
        gauge(&a.metrics.render(), "outbox_owned_buckets") == 64
    })
    .await;
    config.relay.rebalance_interval = Duration::from_millis(100);
    config.relay.lease_timeout = Duration::from_millis(1000);
    let b = slow(&config);
    eventually("B sees A", || async {
        gauge(&b.metrics.render(), "outbox_relays") == 2
    })
    .await;
    let producer = Producer::start(&db.url, "agg", 50);
    let client = db.client().await;
    eventually("A publishes", || async {
        db.count(&client, "dispatched").await > 50
    })
    .await;

    // WHEN Postgres terminates A's coordination connection (A registered first: member slot 0)
    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND classid::int8 = $1 AND objsubid = 1 \
               AND objid = 'outbox_events'::regclass::oid \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&0x4F52_0000_i64],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);

    // THEN B takes buckets over and publishes (A, reconnected, holds none until its next
    // rebalance an hour away)
    eventually("B owns buckets", || async {
        gauge(&b.metrics.render(), "outbox_owned_buckets") > 0
    })
    .await;
    let marked = db.count(&client, "dispatched").await;
    eventually("B publishes", || async {
        db.count(&client, "dispatched").await > marked + 400
    })
    .await;
    // (A leaves, so that B ends up owning everything and the backlog drains)
    a.stop().await;
    let written = producer.stop().await;
    eventually("every event dispatched", || async {
        db.count(&client, "dispatched").await == written as i64
    })
    .await;
    b.stop().await;

    // AND A stopped claiming as soon as its connection (and so its locks) was gone: the only
    // duplicates are events A had in flight at that moment, not everything both published
    // while A still believed it owned the buckets
    let messages = drain_queue(&broker).await;
    let deliveries = check_first_deliveries(&messages, &mut std::collections::HashMap::new());
    assert_eq!(deliveries.unique, written);
    let duplicates: usize = deliveries.duplicates.values().sum();
    assert!(duplicates <= 20 * 4, "{duplicates} duplicates of {written}");
    eprintln!("coordination connection killed: {written} events, {duplicates} duplicates");
    broker.cleanup().await;
}
