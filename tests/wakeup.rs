//! The idle/wake-up protocol: producers only NOTIFY while a relay sleeps, and no event ever
//! waits for the fallback poll because of it — including producers whose transaction is
//! still open while the relay decides to sleep.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wake_up_is_lost_whatever_the_timing() {
    // GIVEN a relay that polls once an hour and goes to sleep 2 ms after its last work
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.relay.poll_interval = Duration::from_secs(3600);
    config.relay.rebalance_interval = Duration::from_secs(3600);
    config.relay.lease_timeout = Duration::from_secs(7200);
    config.relay.linger = Duration::from_millis(2);
    config.relay.linger_poll_interval = Duration::from_millis(1);
    let relay = start_relay(&config);
    let mut client = db.client().await;

    // WHEN events are committed one at a time at irregular moments, each transaction held
    // open for a random while between INSERT and COMMIT (so the relay often announces sleep
    // while a producer that saw "nobody sleeps" has not committed yet)
    for i in 0..80 {
        let (pause, hold) = {
            let mut rng = rand::rng();
            (rng.random_range(0..12u64), rng.random_range(0..6u64))
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let tx = client.transaction().await.unwrap();
        let id: uuid::Uuid = tx
            .query_one(
                "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('order', 'w', $1, '{}') RETURNING id",
                &[&format!("e{i}")],
            )
            .await
            .unwrap()
            .get(0);
        tokio::time::sleep(Duration::from_millis(hold)).await;
        tx.commit().await.unwrap();

        // THEN each one is delivered on its own (no later insert can rescue a lost wake-up:
        // the next one is written only after this one arrived)
        let got = receive_n(&mut rx, 1).await;
        assert_eq!(got[0].message_id, id.to_string(), "event {i}");
    }
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_do_not_notify_while_the_relay_is_awake() {
    // GIVEN a relay that lingers 10 s after work, and a listener counting notifications
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.relay.linger = Duration::from_secs(10);
    let relay = start_relay(&config);
    let client = db.client().await;
    let (listener, mut notifications) = connector(&db.url).connect_dedicated().await.unwrap();
    listener
        .batch_execute("LISTEN outbox_events")
        .await
        .unwrap();

    // WHEN the relay was woken once and then 100 events are committed while it lingers
    db.insert(&client, "warm", "up").await;
    receive_n(&mut rx, 1).await;
    while notifications.try_recv().is_ok() {}
    for i in 0..100 {
        db.insert(&client, &format!("b-{}", i % 10), "burst").await;
    }
    receive_n(&mut rx, 100).await;

    // THEN the producers sent no NOTIFY at all
    let mut count = 0;
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(100), notifications.recv()).await
    {
        if matches!(m, tokio_postgres::AsyncMessage::Notification(_)) {
            count += 1;
        }
    }
    assert_eq!(
        count, 0,
        "producers paid for {count} notifications while the relay was awake"
    );
    relay.stop().await;
    broker.cleanup().await;
}
