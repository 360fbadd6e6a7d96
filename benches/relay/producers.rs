//! Part 5: the producers' commit rate, single-row transactions on 4 connections, without a
//! trigger, with an always-NOTIFY trigger, with the relay's trigger, and with a running relay.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    drain::{spawn_relay, stop},
    fixtures::{broker_cleanup, connect, drop_db, fresh_broker, fresh_db},
};

/// 5. Producers' commit rate: 4 connections, single-row transactions, for `secs`.
async fn producer_rate(url: &str, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for p in 0..4 {
        let (url, stop, count) = (url.to_owned(), stop.clone(), count.clone());
        handles.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let stmt = client
                .prepare(
                    "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('order', $1, 'created', '{\"a\": 1}')",
                )
                .await
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .execute(&stmt, &[&format!("{p}-{}", i % 500)])
                    .await
                    .unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Part 5's four variants, each in a fresh database: no trigger, an always-NOTIFY trigger,
/// the relay's trigger with no relay, the relay's trigger with a running relay.
pub async fn producers(secs: u64) -> (f64, f64, f64, f64) {
    // No trigger, no relay.
    let (n1, url1) = fresh_db().await;
    connect(&url1)
        .await
        .batch_execute("DROP TRIGGER outbox_events_notify ON outbox_events")
        .await
        .unwrap();
    let bare = producer_rate(&url1, secs).await;
    drop_db(&n1).await;
    // A per-statement trigger that always notifies (the common design), no relay.
    let (n2, url2) = fresh_db().await;
    connect(&url2)
        .await
        .batch_execute(
            "DROP TRIGGER outbox_events_notify ON outbox_events;
             CREATE FUNCTION always_notify() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_notify('outbox_events', ''); RETURN NULL; END $$;
             CREATE TRIGGER always AFTER INSERT ON outbox_events FOR EACH STATEMENT
             EXECUTE FUNCTION always_notify();",
        )
        .await
        .unwrap();
    let always = producer_rate(&url2, secs).await;
    drop_db(&n2).await;
    // The relay's trigger, no relay asleep (nobody to notify): the trigger's own cost.
    let (n4, url4) = fresh_db().await;
    let trigger_only = producer_rate(&url4, secs).await;
    drop_db(&n4).await;
    // The relay's trigger with a running relay.
    let (n3, url3) = fresh_db().await;
    let (conn, exchange, queue) = fresh_broker().await;
    let relay = spawn_relay(&url3, &exchange, 500, &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ours = producer_rate(&url3, secs).await;
    stop(relay);
    broker_cleanup(&conn, &exchange, &queue).await;
    drop_db(&n3).await;
    (bare, always, trigger_only, ours)
}
