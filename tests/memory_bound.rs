//! Memory bounded in every path: a parked aggregate costs one slot, not its tail (a poisoned
//! head with a tail ten times `relay.max_pending_in_memory` while other aggregates flow), and
//! rescans and takeovers obey `relay.max_pending_in_memory` as the main read does (a stalled
//! replica's backlog, below the survivor's cursor, taken over through a small memory bound).
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashMap, time::Duration};

use common::{
    TestBroker, TestDb,
    delivery::{check_first_deliveries, drain_queue},
    eventually,
    metrics::{gauge, total, value},
    producers::insert_backlog,
    publisher::{Fault, Faulty},
    relay_config, start_relay_with,
};
use outbox_relay::broker::{PublishError, rabbitmq::RabbitMqPublisher};

const MAX_IN_MEMORY: usize = 200;

fn faulty(
    config: &outbox_relay::config::Config,
) -> (
    Faulty<RabbitMqPublisher>,
    std::sync::Arc<std::sync::Mutex<Fault>>,
) {
    Faulty::new(
        RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout).unwrap(),
    )
}

async fn dispatched_like(client: &tokio_postgres::Client, pattern: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM outbox_events WHERE status = 'dispatched' \
             AND aggregate_id LIKE $1",
            &[&pattern],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_head_holds_one_slot_while_other_aggregates_flow_and_its_tail_follows_in_order()
{
    // GIVEN one aggregate of 2,001 events whose head the broker refuses as unroutable (retried
    // every 50-200 ms, far from going dead), room for 200 events in memory
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let client = db.client().await;
    insert_backlog(&client, "poisoned", 1, 2001).await;
    let head: uuid::Uuid = client
        .query_one(
            "SELECT id FROM outbox_events WHERE aggregate_id = 'poisoned-0' ORDER BY seq LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // AND 1,000 events of 100 other aggregates written after that whole tail
    insert_backlog(&client, "other", 100, 10).await;
    let mut config = relay_config(&db, &broker);
    config.relay.batch_size = 50;
    config.relay.max_pending_in_memory = MAX_IN_MEMORY;
    config.retry.max_attempts = 1_000_000;
    let (publisher, fault) = faulty(&config);
    *fault.lock().unwrap() = Fault::Fail(HashMap::from([(
        head,
        PublishError::Unroutable("no queue bound".into()),
    )]));

    // WHEN the relay runs
    let relay = start_relay_with(&config, publisher);

    // THEN every other aggregate's event is published while the head still fails
    eventually("the other aggregates' events dispatched", || async {
        dispatched_like(&client, "other-%").await == 1000
    })
    .await;
    let (attempts, _) = common::attempts_and_dead(&client).await;
    assert!(attempts > 0, "the head was tried and failed");
    assert_eq!(dispatched_like(&client, "poisoned-%").await, 0);
    let text = relay.metrics.render();
    assert!(
        value(&text, "outbox_read_parked_left_total") > 0.0,
        "the poisoned tail was left in the table"
    );
    assert!(gauge(&text, "outbox_events_in_memory_peak") <= MAX_IN_MEMORY as i64);

    // WHEN the head is accepted again
    *fault.lock().unwrap() = Fault::None;

    // THEN the whole tail follows it, nothing lost, nothing dead
    eventually("the poisoned aggregate's events dispatched", || async {
        dispatched_like(&client, "poisoned-%").await == 2001
    })
    .await;
    let text = relay.metrics.render();
    relay.stop().await;
    assert_eq!(db.count(&client, "pending").await, 0);
    assert_eq!(db.count(&client, "dead").await, 0);
    assert!(gauge(&text, "outbox_events_in_memory_peak") <= MAX_IN_MEMORY as i64);

    // AND every aggregate's first deliveries are in write order, the poisoned one's included
    let messages = drain_queue(&broker).await;
    let mut last = HashMap::new();
    let deliveries = check_first_deliveries(&messages, &mut last);
    assert_eq!(deliveries.unique, 3001);
    assert_eq!(last["poisoned-0"], 2001);
    eprintln!(
        "poisoned head: read left {} events in the table, {} gaps",
        value(&text, "outbox_read_parked_left_total"),
        value(&text, "outbox_read_gaps_total"),
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replicas_backlog_below_the_cursor_is_taken_over_within_the_memory_bound() {
    // GIVEN two relays with room for 200 events each, one of them stalled: its broker never
    // answers, so its share of a 4,000-event backlog (40 aggregates) stays pending while
    // the healthy one drains its own share and its cursor passes the stalled share's rows
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let client = db.client().await;
    let mut config = relay_config(&db, &broker);
    config.relay.batch_size = 50;
    config.relay.max_pending_in_memory = MAX_IN_MEMORY;
    config.relay.rebalance_interval = Duration::from_millis(100);
    config.relay.lease_timeout = Duration::from_millis(1000);
    // The stalled replica's calls must never time out (a timeout would pause it, not stall).
    config.relay.publish_timeout = Duration::from_secs(3600);
    let (healthy_publisher, _) = faulty(&config);
    let healthy = start_relay_with(&config, healthy_publisher);
    let (stalled_publisher, stall) = faulty(&config);
    *stall.lock().unwrap() = Fault::Delay(Duration::from_secs(3600));
    let stalled = start_relay_with(&config, stalled_publisher);
    eventually("buckets split", || async {
        let (h, s) = (
            gauge(&healthy.metrics.render(), "outbox_owned_buckets"),
            gauge(&stalled.metrics.render(), "outbox_owned_buckets"),
        );
        h + s == 64 && h > 0 && s > 0
    })
    .await;
    insert_backlog(&client, "agg", 40, 100).await;
    eventually("the healthy share drained", || async {
        let text = healthy.metrics.render();
        total(&text, "outbox_events_published_total") > 0.0
            && db.count(&client, "dispatched").await
                == total(&text, "outbox_events_published_total") as i64
            && gauge(&text, "outbox_events_in_memory") == 0
    })
    .await;
    let inherited = db.count(&client, "pending").await;
    assert!(
        inherited > 2 * MAX_IN_MEMORY as i64,
        "the stalled share ({inherited}) is several times the memory bound"
    );

    // WHEN the stalled replica dies (its connections drop, its locks go with them)
    stalled.handle.abort();

    // THEN the healthy one takes every bucket over and delivers the whole backlog, never
    // holding more than the bound
    eventually("every event dispatched", || async {
        db.count(&client, "dispatched").await == 4000
    })
    .await;
    let text = healthy.metrics.render();
    healthy.stop().await;
    let peak = gauge(&text, "outbox_events_in_memory_peak");
    assert!(peak <= MAX_IN_MEMORY as i64, "peak {peak} events in memory");

    // AND each aggregate's first deliveries are in write order, nothing lost
    let messages = drain_queue(&broker).await;
    let mut last = HashMap::new();
    let deliveries = check_first_deliveries(&messages, &mut last);
    assert_eq!(deliveries.unique, 4000);
    assert!(last.values().all(|n| *n == 100), "{last:?}");
    eprintln!("takeover of {inherited} events below the cursor: peak {peak} events in memory");
    broker.cleanup().await;
}
