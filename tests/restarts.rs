//! Real restarts of servers the tests own: a PostgreSQL cluster stopped the way a crash or a
//! failover stops it (`pg_ctl stop -m immediate`), and a RabbitMQ node whose application is
//! stopped and started (`rabbitmqctl stop_app` / `start_app`, as an upgrade does), each in the
//! middle of a drain. Nothing is lost, per-aggregate order holds, the restart costs no
//! attempts and kills no event, `/readyz` follows, and LISTEN wake-ups work afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{
    delivery::{check_first_deliveries, drain_queue},
    http::http_get,
    process::{RelayProcess, notify_only_relay},
    producers::insert_backlog,
    servers::{Cluster, RabbitNode},
    *,
};
use outbox_relay::{config::TableName, store::migrate::migrate};
use uuid::Uuid;

/// Stops a server with `stop` until the relay at `addr` reports not ready, starts it with
/// `start`, and waits until the relay is ready again.
async fn restart_under(addr: std::net::SocketAddr, stop: impl FnOnce(), start: impl FnOnce()) {
    stop();
    eventually("/readyz 503 while the server is down", || async {
        http_get(addr, "/readyz").await.0 == 503
    })
    .await;
    start();
    eventually("/readyz 200 after the restart", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn a_database_restart_mid_drain_loses_nothing_and_costs_no_attempts() {
    // GIVEN a cluster of the test's own holding 20,000 events over 100 aggregates
    let cluster = Cluster::start(None);
    let url = cluster.url("127.0.0.1", "postgres", "sslmode=disable");
    let table = TableName::parse("outbox_events").unwrap();
    {
        let mut client = connect(&url).await;
        migrate(&mut client, &table).await.unwrap();
        insert_backlog(&client, "agg", 100, 200).await;
    }
    let total = 20_000_i64;

    // AND a relay draining it that only wakes up on NOTIFY (no polls, no rescans)
    let broker = TestBroker::bound().await;
    let relay = notify_only_relay(&url, &broker.exchange);
    let addr = relay.http_addr().await;
    let count = |status: &'static str| {
        let url = url.clone();
        async move { count_status(&connect(&url).await, status).await }
    };
    eventually("the drain under way", || async {
        count("dispatched").await > 0
    })
    .await;
    assert!(
        count("pending").await > 0,
        "the drain ended before the restart"
    );

    // WHEN the server stops like a crash, stays down until the relay notices, and restarts
    restart_under(addr, || cluster.stop_immediately(), || cluster.resume()).await;

    // THEN the relay finishes the drain
    eventually("every event dispatched", || async {
        count("dispatched").await == total
    })
    .await;

    // AND the restart cost no attempts and killed nothing
    let client = connect(&url).await;
    assert_eq!(attempts_and_dead(&client).await, (0, 0));

    // AND a LISTEN wake-up works again: once the relay sleeps, a new event gets out
    eventually("the relay announces that it sleeps", || {
        relay_sleeps(&client)
    })
    .await;
    insert_backlog(&client, "after", 1, 1).await;
    eventually("the event written after the restart dispatched", || async {
        count("dispatched").await == total + 1
    })
    .await;

    // AND every event reached the broker, in order per aggregate
    drop(relay);
    let messages = drain_queue(&broker).await;
    let deliveries = check_first_deliveries(&messages, &mut HashMap::new());
    assert_eq!(deliveries.unique as i64, total + 1);
    broker.cleanup().await;
}

#[tokio::test]
async fn a_broker_restart_mid_drain_loses_nothing_and_costs_no_attempts() {
    // GIVEN a RabbitMQ node of the test's own with a durable queue, and 20,000 events over
    // 100 aggregates
    let rabbit = RabbitNode::start();
    let id = Uuid::new_v4().simple().to_string();
    let (exchange, queue) = (format!("restart-{id}"), format!("restart-q-{id}"));
    let broker = TestBroker::attach(&rabbit.url(), &exchange, &queue, true).await;
    broker.bind("#").await;
    let db = TestDb::migrated().await;
    let client = db.client().await;
    insert_backlog(&client, "agg", 100, 200).await;
    let total = 20_000_i64;

    // AND a relay draining it to that node
    let relay = RelayProcess::spawn(&[
        ("OUTBOX_RELAY_DATABASE__URL", db.url.clone()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", rabbit.url()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE", exchange.clone()),
    ]);
    let addr = relay.http_addr().await;
    eventually("the drain under way", || async {
        db.count(&client, "dispatched").await > 0
    })
    .await;
    assert!(
        db.count(&client, "pending").await > 0,
        "the drain ended before the restart"
    );

    // WHEN the broker's application stops until the relay notices, then starts again
    drop(broker);
    restart_under(addr, || rabbit.stop_app(), || rabbit.start_app()).await;

    // THEN the relay finishes the drain
    eventually("every event dispatched", || async {
        db.count(&client, "dispatched").await == total
    })
    .await;

    // AND the restart cost no attempts and killed nothing
    assert_eq!(attempts_and_dead(&client).await, (0, 0));

    // AND every event is in the durable queue, in order per aggregate
    drop(relay);
    let broker = TestBroker::attach(&rabbit.url(), &exchange, &queue, true).await;
    let messages = drain_queue(&broker).await;
    let deliveries = check_first_deliveries(&messages, &mut HashMap::new());
    assert_eq!(deliveries.unique as i64, total);
}
