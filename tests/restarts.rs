//! Real restarts: the database server of the test's own is stopped the way a crash or a
//! failover stops it (`pg_ctl stop -m immediate`) in the middle of a drain, and started again.
//! Nothing is lost, per-aggregate order holds, the restart costs no attempts and kills no
//! event, `/readyz` follows the database, and LISTEN wake-ups work afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{
    faults::{check_first_deliveries, drain_queue, http_get, insert_backlog, notify_only_relay},
    servers::Cluster,
    *,
};
use outbox_relay::store::{TableName, migrate::migrate};

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
    cluster.stop_immediately();
    eventually("/readyz 503 while the database is down", || async {
        http_get(addr, "/readyz").await.0 == 503
    })
    .await;
    cluster.resume();

    // THEN the relay is ready again and finishes the drain
    eventually("/readyz 200 after the restart", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    eventually("every event dispatched", || async {
        count("dispatched").await == total
    })
    .await;

    // AND the restart cost no attempts and killed nothing
    let client = connect(&url).await;
    let (attempts, dead): (i32, i64) = {
        let row = client
            .query_one(
                "SELECT COALESCE(max(attempts), 0), \
                        count(*) FILTER (WHERE status = 'dead') FROM outbox_events",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((attempts, dead), (0, 0));

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
