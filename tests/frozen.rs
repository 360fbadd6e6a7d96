//! Connections that stop answering without closing (a hung server, a NAT or load-balancer
//! entry dropped, a stuck pooler): neither end notices, no error comes, TCP keepalive does not
//! help while the proxy's kernel answers. The relay must notice by its own deadlines, replace
//! the connections, end the server sessions it gave up on (the frozen coordination session
//! holds every bucket's lock), and publish again, with the default deadlines.
#![allow(clippy::unwrap_used)]

mod common;

use common::{proxy::postgres_proxy, proxy::rabbitmq_proxy, *};
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
