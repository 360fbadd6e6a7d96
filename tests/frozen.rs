//! Connections that stop answering without closing (a hung server, a NAT or load-balancer
//! entry dropped, a stuck pooler): neither end notices, no error comes, TCP keepalive does not
//! help while the proxy's kernel answers. The relay must notice by its own deadlines, replace
//! the connections, end the server sessions it gave up on (the frozen coordination session
//! holds every bucket's lock), and publish again, with the default deadlines.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    metrics, producers,
    proxy::{postgres_proxy, rabbitmq_proxy},
    *,
};
use tokio_postgres::Client;

/// Coordination sessions of the relay on `db` the server still has.
async fn coordinator_sessions(admin: &Client, db: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'outbox-relay-coordinator'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_postgres_connections_are_replaced_and_their_sessions_ended() {
    // GIVEN a relay reaching Postgres through a proxy, with the default deadlines
    // (`database.statement_timeout`, `relay.lease_timeout`, the LISTEN check); only the poll
    // and rescan intervals and the retry backoff are the tests' short ones
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let (proxy, url) = postgres_proxy(&db.name).await;
    let mut config = relay_config(&db, &broker);
    config.database.url = url.parse().unwrap();
    let relay = start_relay(&config);
    let client = db.client().await;
    let admin = connect(&format!("{}/postgres", pg_server())).await;
    for i in 0..20 {
        db.insert(&client, &format!("a-{}", i % 4), "before").await;
    }
    eventually("events before the freeze published", || async {
        db.count(&client, "dispatched").await == 20
    })
    .await;
    assert_eq!(coordinator_sessions(&admin, &db.name).await, 1);

    // WHEN every connection the relay has open stops answering (pool, LISTEN, coordination:
    // the server keeps the sessions, the relay gets no error), and more events are written
    proxy.freeze();
    for i in 0..50 {
        db.insert(&client, &format!("a-{}", i % 4), "after").await;
    }

    // THEN the relay notices, reconnects and publishes them
    eventually("events after the freeze published", || async {
        db.count(&client, "dispatched").await == 70
    })
    .await;
    // AND the frozen coordination session, which held the buckets' locks, was ended by its
    // replacement rather than left counting as a second relay
    eventually("one coordination session left", || async {
        coordinator_sessions(&admin, &db.name).await == 1
    })
    .await;
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_connection_is_replaced() {
    // GIVEN a relay reaching RabbitMQ through a proxy, with the default publish timeout and
    // heartbeat
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let (proxy, url) = rabbitmq_proxy().await;
    let mut config = relay_config(&db, &broker);
    config.broker.rabbitmq.url = url;
    let relay = start_relay(&config);
    let client = db.client().await;
    for i in 0..20 {
        db.insert(&client, &format!("b-{}", i % 4), "before").await;
    }
    eventually("events before the freeze published", || async {
        db.count(&client, "dispatched").await == 20
    })
    .await;

    // WHEN the broker connection stops answering without closing, and more events are written
    proxy.freeze();
    for i in 0..50 {
        db.insert(&client, &format!("b-{}", i % 4), "after").await;
    }

    // THEN the relay opens a new connection and publishes them (none went dead)
    eventually("events after the freeze published", || async {
        db.count(&client, "dispatched").await == 70
    })
    .await;
    assert_eq!(db.count(&client, "dead").await, 0);
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_broker_path_freezes_lets_its_buckets_go() {
    // GIVEN two replicas sharing the work, one of them reaching RabbitMQ through a proxy,
    // with the default publish timeout, heartbeat and relay.broker_release_after (30 s)
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let (proxy, url) = rabbitmq_proxy().await;
    let healthy_config = relay_config(&db, &broker);
    let mut cut_off_config = relay_config(&db, &broker);
    cut_off_config.broker.rabbitmq.url = url;
    let healthy = start_relay(&healthy_config);
    let cut_off = start_relay(&cut_off_config);
    let client = db.client().await;
    let owned =
        |relay: &RunningRelay| metrics::gauge(&relay.metrics.render(), "outbox_owned_buckets");
    eventually("both replicas own buckets", || async {
        owned(&healthy) > 0 && owned(&cut_off) > 0
    })
    .await;
    producers::insert_backlog(&client, "r", 100, 10).await;
    eventually("the first backlog published", || async {
        db.count(&client, "dispatched").await == 1000
    })
    .await;

    // WHEN the second replica's broker path freezes for good, every connection old and new
    // accepted and never answered (its database path stays fine), and more events are written
    // over every aggregate
    proxy.stall();
    producers::insert_backlog(&client, "r", 100, 10).await;

    // THEN it lets its buckets go, the healthy replica takes them over and publishes
    // everything: publish timeout (15 s) + relay.broker_release_after (30 s) + a rebalance
    eventually_within(
        "every event published by the healthy replica",
        Duration::from_secs(120),
        || async { db.count(&client, "dispatched").await == 2000 },
    )
    .await;
    assert_eq!(owned(&cut_off), 0);
    assert_eq!(owned(&healthy), 64);
    assert_eq!(db.count(&client, "dead").await, 0);
    cut_off.stop().await;
    healthy.stop().await;
    broker.cleanup().await;
}
