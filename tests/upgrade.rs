//! Upgrades: a database populated under schema version 1 is migrated to the current schema
//! while a relay drains it and a producer keeps writing; nothing is lost, order holds.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{
    delivery::{check_first_deliveries, drain_queue},
    process::RelayProcess,
    producers::{Producer, insert_backlog},
    *,
};
use outbox_relay::store::migrate::{migrate, migrate_until};

#[tokio::test]
async fn a_version_1_database_upgrades_under_a_running_relay_losing_nothing() {
    // GIVEN a database at schema version 1 holding a backlog of 1,000 events
    let db = TestDb::empty().await;
    let mut admin = db.client().await;
    migrate_until(&mut admin, &db.table, 1).await.unwrap();
    insert_backlog(&admin, "pre", 20, 50).await;
    let broker = TestBroker::bound().await;

    // AND a relay draining it while a producer keeps writing
    let relay = RelayProcess::spawn(&[
        ("OUTBOX_RELAY_DATABASE__URL", db.url.clone()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
        ("OUTBOX_RELAY_RELAY__RESCAN_INTERVAL", "500ms".into()),
    ]);
    let producer = Producer::start(&db.url, "live", 10);
    eventually("the relay publishing", || async {
        db.count(&admin, "dispatched").await > 0
    })
    .await;

    // WHEN the schema is migrated to the current version meanwhile
    let applied = migrate(&mut admin, &db.table).await.unwrap();
    assert!(!applied.is_empty(), "nothing was left to migrate");
    let before = db.count(&admin, "dispatched").await;
    eventually("more events published after the upgrade", || async {
        db.count(&admin, "dispatched").await > before + 100
    })
    .await;
    let written = producer.stop().await;

    // THEN every event is published once, in order per aggregate, and none is dead
    let total = 1_000 + written as i64;
    eventually("the outbox drained", || async {
        db.count(&admin, "dispatched").await == total
    })
    .await;
    assert_eq!(db.count(&admin, "dead").await, 0);
    drop(relay);
    let messages = drain_queue(&broker).await;
    let deliveries = check_first_deliveries(&messages, &mut HashMap::new());
    assert_eq!(deliveries.unique as i64, total);

    // AND the trigger now runs with its owner's privileges
    let definer: bool = admin
        .query_one(
            "SELECT prosecdef FROM pg_proc WHERE proname = 'outbox_events_notify'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(definer);
    broker.cleanup().await;
}
