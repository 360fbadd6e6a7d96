//! Several relays on one table: buckets split between them, no event published twice in
//! steady state (also while replicas join or leave under load), per-aggregate order across
//! replicas, and a dead replica's share is picked up (in-process and as real processes).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{
    delivery::{check_first_deliveries, drain_queue},
    metrics::{gauge, total},
    process::RelayProcess,
    producers::Producer,
    publisher::{Fault, Faulty},
    *,
};
use outbox_relay::{broker::rabbitmq::RabbitMqPublisher, config::Config};

const BATCH: usize = 20;
/// `relay.max_inflight_batches` (default).
const INFLIGHT: usize = 4;

fn published(relay: &RunningRelay) -> i64 {
    total(&relay.metrics.render(), "outbox_events_published_total") as i64
}

fn owned(relay: &RunningRelay) -> i64 {
    gauge(&relay.metrics.render(), "outbox_owned_buckets")
}

fn fast_config(db: &TestDb, broker: &TestBroker) -> Config {
    let mut config = relay_config(db, broker);
    config.relay.rebalance_interval = Duration::from_millis(100);
    config.relay.lease_timeout = Duration::from_millis(1000);
    config.relay.batch_size = BATCH;
    config
}

/// A relay whose broker takes `delay` per publish call, so batches are always in flight when
/// buckets change hands.
fn slow_relay(config: &Config, delay: Duration) -> RunningRelay {
    let (publisher, fault) = Faulty::new(
        RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout).unwrap(),
    );
    *fault.lock().unwrap() = Fault::Delay(delay);
    start_relay_with(config, publisher)
}

async fn all_dispatched(db: &TestDb, total: usize) {
    let client = db.client().await;
    eventually("every event dispatched", || async {
        db.count(&client, "dispatched").await == total as i64
    })
    .await;
}

/// Waits until the live relays own every bucket between them, each a fair share, and each
/// has published since.
async fn settled_and_working(relays: &[RunningRelay]) {
    let fair = 64 / relays.len() as i64 - 2;
    eventually("buckets split between the live relays", || async {
        let owned: Vec<i64> = relays.iter().map(owned).collect();
        owned.iter().sum::<i64>() == 64 && owned.iter().all(|o| *o >= fair)
    })
    .await;
    let marks: Vec<i64> = relays.iter().map(published).collect();
    eventually("every live relay publishes", || async {
        relays.iter().zip(&marks).all(|(r, m)| published(r) > *m)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_joining_and_leaving_under_load_publish_nothing_twice() {
    // GIVEN one relay (behind a slow broker, so batches are always in flight when buckets
    // change hands) and a producer writing continuously over 100 aggregates
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let config = fast_config(&db, &broker);
    let delay = Duration::from_millis(50);
    let mut relays = vec![slow_relay(&config, delay)];
    let producer = Producer::start(&db.url, "agg", 100);
    settled_and_working(&relays).await;

    // WHEN replicas join and leave (gracefully) while events keep coming: 1 -> 3 -> 2 -> 3 -> 1
    let mut shares = Vec::new();
    for step in ["join", "join", "leave", "join", "leave", "leave"] {
        if step == "join" {
            relays.push(slow_relay(&config, delay));
        } else {
            relays.remove(0).stop().await;
        }
        // THEN after each step the buckets split between the live ones (visible in
        // `outbox_owned_buckets`) and all of them work
        settled_and_working(&relays).await;
        shares.push(relays.iter().map(owned).collect::<Vec<_>>());
    }
    let written = producer.stop().await;
    all_dispatched(&db, written).await;
    for relay in relays {
        relay.stop().await;
    }

    // AND every event was published exactly once, first deliveries in order per aggregate
    let messages = drain_queue(&broker).await;
    let deliveries = check_first_deliveries(&messages, &mut HashMap::new());
    assert_eq!(deliveries.unique, written);
    assert!(
        deliveries.duplicates.is_empty(),
        "{} events published twice while buckets changed hands",
        deliveries.duplicates.len()
    );
    eprintln!("{written} events, no duplicates; bucket shares after each step: {shares:?}");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_buckets_are_taken_over_and_order_holds() {
    // GIVEN three relays on one table and a producer writing continuously
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let config = fast_config(&db, &broker);
    let mut relays: Vec<RunningRelay> = (0..3).map(|_| start_relay(&config)).collect();
    eventually("buckets split three ways", || async {
        let owned: Vec<i64> = relays.iter().map(owned).collect();
        owned.iter().sum::<i64>() == 64 && owned.iter().all(|o| *o >= 20)
    })
    .await;
    let producer = Producer::start(&db.url, "agg", 60);
    eventually("all replicas publish", || async {
        relays.iter().all(|r| published(r) > 0)
    })
    .await;

    // WHEN one replica dies abruptly mid-work (its task aborted: connections dropped, locks
    // released by the server, in-flight batches gone)
    let dead = relays.remove(0);
    dead.handle.abort();
    let died = Instant::now();

    // THEN the survivors take over all buckets
    eventually("survivors own every bucket", || async {
        relays.iter().map(owned).sum::<i64>() == 64
    })
    .await;
    let failover = died.elapsed();
    let written = producer.stop().await;
    all_dispatched(&db, written).await;
    for relay in relays {
        relay.stop().await;
    }

    // AND everything is delivered, first deliveries in order; duplicates only for what the
    // dead replica had in flight
    let messages = drain_queue(&broker).await;
    let deliveries = check_first_deliveries(&messages, &mut HashMap::new());
    assert_eq!(deliveries.unique, written);
    let duplicates: usize = deliveries.duplicates.values().sum();
    assert!(
        duplicates <= BATCH * INFLIGHT,
        "{duplicates} duplicates; the dead replica had at most {} events in flight",
        BATCH * INFLIGHT
    );
    eprintln!(
        "failover (rebalance 100 ms): survivors owned every bucket {failover:?} after the \
         kill; {written} events, {duplicates} duplicates"
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_different_bucket_counts_refuse_to_claim() {
    // GIVEN two relays that disagree on relay.buckets
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut config = fast_config(&db, &broker);
    let a = start_relay(&config);
    config.relay.buckets = 32;
    let b = start_relay(&config);

    // THEN neither owns any bucket (their buckets would overlap)
    eventually("both own nothing", || async {
        owned(&a) == 0 && owned(&b) == 0 && gauge(&a.metrics.render(), "outbox_relays") == 2
    })
    .await;
    let client = db.client().await;
    db.insert(&client, "x", "created").await;

    // AND once the odd one stops, the other takes everything and publishes
    b.stop().await;
    eventually("delivered after agreement", || async {
        db.count(&client, "dispatched").await == 1
    })
    .await;
    a.stop().await;
    broker.cleanup().await;
}

fn process_env(db: &TestDb, broker: &TestBroker) -> Vec<(&'static str, String)> {
    vec![
        ("OUTBOX_RELAY_DATABASE__URL", db.url.clone()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
        ("OUTBOX_RELAY_RELAY__BATCH_SIZE", BATCH.to_string()),
        ("OUTBOX_RELAY_RELAY__POLL_INTERVAL", "200ms".into()),
        ("OUTBOX_RELAY_RELAY__REBALANCE_INTERVAL", "200ms".into()),
        ("OUTBOX_RELAY_RELAY__LEASE_TIMEOUT", "1s".into()),
    ]
}

fn owns(relay: &RelayProcess, buckets: i64) -> bool {
    relay
        .lines("bucket ownership changed")
        .last()
        .is_some_and(|l| l["owned"] == buckets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_processes_split_the_table_and_one_survives_the_others_kill_9() {
    // GIVEN two relay processes on one table and a producer writing continuously
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let env = process_env(&db, &broker);
    let mut a = RelayProcess::spawn(&env);
    let mut b = RelayProcess::spawn(&env);
    let producer = Producer::start(&db.url, "agg", 60);

    // THEN each logs that it owns half of the buckets
    eventually("ownership logged as 32 + 32", || {
        std::future::ready(owns(&a, 32) && owns(&b, 32))
    })
    .await;
    let client = db.client().await;
    eventually("work is being done", || async {
        db.count(&client, "dispatched").await > 100
    })
    .await;

    // WHEN one is killed with SIGKILL
    a.kill9();
    let died = Instant::now();

    // THEN the other logs that it owns every bucket
    eventually("survivor owns all 64", || std::future::ready(owns(&b, 64))).await;
    let failover = died.elapsed();
    let written = producer.stop().await;
    all_dispatched(&db, written).await;
    assert!(b.terminate().await.success());

    // AND everything is delivered once at least, first deliveries in order, duplicates only
    // for what the killed process had in flight
    let messages = drain_queue(&broker).await;
    let deliveries = check_first_deliveries(&messages, &mut HashMap::new());
    assert_eq!(deliveries.unique, written);
    let duplicates: usize = deliveries.duplicates.values().sum();
    assert!(duplicates <= BATCH * INFLIGHT, "{duplicates} duplicates");
    eprintln!(
        "processes: survivor owned every bucket {failover:?} after kill -9 (rebalance \
         200 ms); {written} events, {duplicates} duplicates"
    );
    broker.cleanup().await;
}
