//! The real binary under abuse: `kill -9` at random moments while producers write (nothing
//! lost, order of first deliveries kept, duplicates only for what was in flight at each
//! crash), and SIGTERM mid-drain (exit 0 without hitting the shutdown deadline, nothing
//! published-but-pending).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use common::{
    delivery::{check_first_deliveries, drain_queue},
    process::{RelayProcess, spawn_binary},
    producers::{Producer, insert_backlog},
    *,
};
use outbox_relay::config::Config;
use rand::Rng;

/// `relay.max_pending_in_memory` of these runs: events a relay holds (read ahead, at the
/// broker, confirmed and not yet marked). A killed run can have published at most these
/// without marking them, so at most these are published again after it.
const HELD: usize = 300;

fn env_for(db: &TestDb, broker: &TestBroker, batch: usize) -> Vec<(&'static str, String)> {
    vec![
        ("OUTBOX_RELAY_DATABASE__URL", db.url.clone()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
        ("OUTBOX_RELAY_RELAY__BATCH_SIZE", batch.to_string()),
        ("OUTBOX_RELAY_RELAY__POLL_INTERVAL", "100ms".into()),
        ("OUTBOX_RELAY_RELAY__REBALANCE_INTERVAL", "200ms".into()),
        ("OUTBOX_RELAY_RELAY__LEASE_TIMEOUT", "1s".into()),
        ("OUTBOX_RELAY_RELAY__SHUTDOWN_TIMEOUT", "10s".into()),
        (
            "OUTBOX_RELAY_RELAY__MAX_PENDING_IN_MEMORY",
            HELD.to_string(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_and_duplicates_only_what_was_in_flight() {
    // GIVEN a backlog of numbered events over 40 aggregates and a producer adding more
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    const BATCH: usize = 50;
    const KILLS: usize = 6;
    let client = db.client().await;
    insert_backlog(&client, "backlog", 40, 150).await;
    let producer = Producer::start(&db.url, "live", 20);

    // WHEN the relay is killed with SIGKILL at a random moment of its work and restarted, six
    // times; each run publishes with its own routing key, so every delivery says which run
    // (process) published it
    for run in 0..KILLS {
        let mut env = env_for(&db, &broker, BATCH);
        env.push((
            "OUTBOX_RELAY_BROKER__RABBITMQ__ROUTING_KEY",
            format!("run-{run}"),
        ));
        let before = db.count(&client, "dispatched").await;
        let mut child = spawn_binary(&env);
        eventually("this run makes progress", || async {
            db.count(&client, "dispatched").await > before
        })
        .await;
        // A random moment while it works (chaos schedule, not an assertion).
        let wait = Duration::from_millis(rand::rng().random_range(0..300));
        tokio::time::sleep(wait).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let written = producer.stop().await + 40 * 150;

    // THEN a final relay delivers everything and marks every row dispatched
    let mut env = env_for(&db, &broker, BATCH);
    env.push(("OUTBOX_RELAY_BROKER__RABBITMQ__ROUTING_KEY", "final".into()));
    let mut last = RelayProcess::spawn(&env);
    eventually("every row dispatched", || async {
        db.count(&client, "dispatched").await == written as i64
    })
    .await;
    assert!(last.terminate().await.success());
    assert_eq!(db.count(&client, "pending").await, 0);

    // AND every committed event was delivered, first deliveries in write order per aggregate
    let messages = drain_queue(&broker).await;
    let deliveries = check_first_deliveries(&messages, &mut HashMap::new());
    assert_eq!(deliveries.unique, written);

    // AND no process published an event twice, and the events delivered again later were
    // each first delivered by a killed run, at most what it can have in flight
    let mut by_run: HashMap<String, HashSet<String>> = HashMap::new();
    let mut first_run: HashMap<String, String> = HashMap::new();
    let mut redelivered: HashMap<String, HashSet<String>> = HashMap::new();
    for m in &messages {
        let run = m.routing_key.clone();
        assert!(
            by_run
                .entry(run.clone())
                .or_default()
                .insert(m.message_id.clone()),
            "{run} published {} twice",
            m.message_id
        );
        match first_run.get(&m.message_id) {
            None => {
                first_run.insert(m.message_id.clone(), run);
            }
            Some(first) => {
                redelivered
                    .entry(first.clone())
                    .or_default()
                    .insert(m.message_id.clone());
            }
        }
    }
    assert!(
        !redelivered.contains_key("final"),
        "the clean run left duplicates"
    );
    for (run, ids) in &redelivered {
        assert!(
            ids.len() <= HELD,
            "{} events of {run} were published again; at most {HELD} can be published and \
             not yet marked",
            ids.len(),
        );
    }
    let per_crash: Vec<usize> = (0..KILLS)
        .map(|run| {
            redelivered
                .get(&format!("run-{run}"))
                .map_or(0, HashSet::len)
        })
        .collect();
    eprintln!(
        "kill -9 x{KILLS}: {written} events, {} deliveries, re-published per crash {per_crash:?}",
        messages.len()
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_drain_exits_0_with_nothing_published_but_pending() {
    // The default drain bound fits Kubernetes' default 30 s grace period.
    assert!(Config::default().relay.shutdown_timeout < Duration::from_secs(30));

    // GIVEN a backlog of 20k events and a relay draining it
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let client = db.client().await;
    insert_backlog(&client, "agg", 500, 40).await;
    let mut child = RelayProcess::spawn(&env_for(&db, &broker, 200));
    eventually("draining", || async {
        db.count(&client, "dispatched").await > 0
    })
    .await;

    // WHEN it receives SIGTERM mid-drain
    let signalled = Instant::now();
    let status = child.terminate().await;
    let exited_after = signalled.elapsed();

    // THEN it exits 0, having settled what was in flight before the deadline
    assert!(status.success(), "{status:?}");
    assert_eq!(child.logged("shutdown requested; draining"), 1);
    assert_eq!(child.logged("relay stopped"), 1);
    assert_eq!(
        child.logged("shutdown timeout reached with batches unsettled; aborting them"),
        0
    );

    // AND every message in the queue is a dispatched row, and every dispatched row is in the
    // queue once (confirmed messages are enqueued, so the queue depth is exact)
    let dispatched = db.count(&client, "dispatched").await;
    assert!(
        dispatched < 20000,
        "drain finished before SIGTERM; test proves nothing"
    );
    let received = drain_queue(&broker).await;
    assert_eq!(received.len() as i64, dispatched);
    let ids: Vec<uuid::Uuid> = received
        .iter()
        .map(|m| m.message_id.parse().unwrap())
        .collect();
    let still_pending: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox_events WHERE id = ANY($1) AND status <> 'dispatched'",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(still_pending, 0);
    eprintln!("SIGTERM mid-drain: exit 0 after {exited_after:?}, {dispatched} dispatched");
    broker.cleanup().await;
}
