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
    let mut config = notify_only_config(&db, &broker);
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

#[tokio::test]
async fn a_relay_waiting_only_for_a_backoff_sleeps_and_new_events_still_go_out() {
    // GIVEN an event waiting out a one-hour backoff
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload, \
                                        attempts, last_error, available_at) \
             VALUES ('order', 'o-1', 'created', '{}', 1, 'nacked', now() + interval '1 hour')",
        )
        .await
        .unwrap();

    // AND a relay that reads it and otherwise only wakes up on NOTIFY (no polls, no rescans)
    let mut config = relay_config(&db, &broker);
    config.relay.poll_interval = Duration::from_secs(3600);
    config.relay.rescan_interval = Duration::from_secs(3600);
    config.relay.linger = Duration::from_millis(1);
    config.relay.linger_poll_interval = Duration::from_millis(1);
    let relay = start_relay(&config);

    // WHEN it has nothing to do but wait for that backoff, it sleeps (so producers notify it)
    eventually("the relay sleeps while the event waits", || {
        relay_sleeps(&client)
    })
    .await;

    // THEN an event of another aggregate written now is published without a poll
    let other = insert_event(&client, "order", "o-2", "created", serde_json::json!({})).await;
    let got = receive_n(&mut rx, 1).await;
    assert_eq!(got[0].message_id, other.to_string());
    relay.stop().await;
    broker.cleanup().await;
}
