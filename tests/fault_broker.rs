//! Broker trouble: an outage (through a per-test TCP proxy) pauses publishing without
//! counting attempts and resumes by itself; so does RabbitMQ closing the relay's connection
//! itself; nacks are per-event retries; a broker that stops confirming is treated as down,
//! not as N failed events.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashMap, time::Duration};

use common::{
    delivery::{count_deliveries, drain_queue},
    http::http_get,
    metrics::gauge,
    process::RelayProcess,
    proxy::rabbitmq_proxy,
    publisher::{Fault, Faulty},
    *,
};
use outbox_relay::broker::rabbitmq::RabbitMqPublisher;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_pauses_publishing_without_burning_attempts() {
    // GIVEN a relay that reaches RabbitMQ through a proxy, with max_attempts = 2
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let (proxy, amqp_via_proxy) = rabbitmq_proxy().await;
    let mut config = relay_config(&db, &broker);
    config.broker.rabbitmq.url = amqp_via_proxy;
    config.retry.max_attempts = 2;
    let relay = start_relay(&config);
    let client = db.client().await;
    let mut before = Vec::new();
    for i in 0..20 {
        before.push(db.insert(&client, &format!("a-{}", i % 4), "before").await);
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in receive_n(&mut rx, 20).await {
        *seen.entry(m.message_id).or_default() += 1;
    }
    eventually("first events settled", || async {
        db.count(&client, "dispatched").await == 20
    })
    .await;

    // WHEN the broker becomes unreachable and more events are written
    proxy.cut();
    let mut during = Vec::new();
    for i in 0..30 {
        during.push(db.insert(&client, &format!("a-{}", i % 4), "during").await);
    }

    // THEN the relay notices, pauses and keeps trying to reconnect
    eventually("relay not ready", || async { !relay.health.ready() }).await;
    eventually("several reconnect attempts", || async {
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    assert!(relay.metrics.render().contains("outbox_broker_up 0"));
    // AND nothing was counted against the events, nothing went dead
    assert_eq!(attempts_and_dead(&client).await, (0, 0));
    assert_eq!(db.count(&client, "pending").await, 30);

    // WHEN the broker is back
    proxy.restore();

    // THEN everything written during the outage arrives, and nothing confirmed before the
    // outage is sent again
    for m in receive_n(&mut rx, 30).await {
        *seen.entry(m.message_id).or_default() += 1;
    }
    eventually("all settled", || async {
        db.count(&client, "dispatched").await == 50
    })
    .await;
    assert!(relay.health.ready());
    for id in before.iter().chain(&during) {
        assert_eq!(seen.get(&id.to_string()), Some(&1), "{id}");
    }
    assert!(rx.try_recv().is_err(), "unexpected extra delivery");
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_event_is_retried_with_attempts_while_others_flow() {
    // GIVEN a broker that nacks one event
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let config = relay_config(&db, &broker);
    let client = db.client().await;
    let victim = db.insert(&client, "v-1", "first").await;
    let successor = db.insert(&client, "v-1", "second").await;
    let (publisher, fault) = Faulty::new(
        RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout).unwrap(),
    );
    *fault.lock().unwrap() = Fault::Nack([victim].into_iter().collect());
    let mut config = config;
    config.retry.max_attempts = 1000;
    let relay = start_relay_with(&config, publisher);
    let other = db.insert(&client, "o-1", "created").await;

    // THEN the other aggregate flows, the victim is retried with attempts and its successor waits
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, other.to_string());
    eventually("victim retried", || async {
        let row = client
            .query_one(
                "SELECT attempts, last_error FROM outbox_events WHERE id = $1",
                &[&victim],
            )
            .await
            .unwrap();
        row.get::<_, i32>(0) >= 2
            && row
                .get::<_, Option<String>>(1)
                .is_some_and(|e| e.contains("nacked"))
    })
    .await;
    assert!(rx.try_recv().is_err(), "successor must not overtake");

    // WHEN the broker accepts again THEN both arrive in order
    *fault.lock().unwrap() = Fault::None;
    let got = receive_n(&mut rx, 2).await;
    assert_eq!(got[0].message_id, victim.to_string());
    assert_eq!(got[1].message_id, successor.to_string());
    assert!(
        relay
            .metrics
            .render()
            .contains("outbox_publish_failures_total{reason=\"nacked\"}")
    );
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_timeout_pauses_like_an_outage() {
    // GIVEN a broker that stops confirming (each call reports a timeout after 100 ms)
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let mut config = relay_config(&db, &broker);
    config.retry.max_attempts = 1;
    let (publisher, fault) = Faulty::new(
        RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout).unwrap(),
    );
    let calls = publisher.calls.clone();
    *fault.lock().unwrap() = Fault::Hang(Duration::from_millis(100));
    let relay = start_relay_with(&config, publisher);
    let client = db.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(db.insert(&client, &format!("h-{i}"), "created").await);
    }

    // THEN the relay pauses after the timeouts without counting attempts (max_attempts = 1
    // would make any counted attempt fatal)
    // (calls run concurrently: wait for their reports, not just for them to start)
    eventually("several timed-out calls", || async {
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 3
            && relay
                .metrics
                .render()
                .contains("outbox_publish_failures_total{reason=\"timeout\"}")
    })
    .await;
    let max_attempts: i32 = client
        .query_one("SELECT coalesce(max(attempts), 0) FROM outbox_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max_attempts, 0);
    assert_eq!(db.count(&client, "dead").await, 0);
    assert!(
        relay
            .metrics
            .render()
            .contains("outbox_publish_failures_total{reason=\"timeout\"}")
    );

    // WHEN confirms flow again THEN everything is delivered
    *fault.lock().unwrap() = Fault::None;
    receive_n(&mut rx, 5).await;
    eventually("all dispatched", || async {
        db.count(&client, "dispatched").await == 5
    })
    .await;
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_as_an_operator_sees_it_one_warning_a_503_and_recovery() {
    // GIVEN the relay process reaching RabbitMQ through a proxy, with max_attempts = 2
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let (proxy, amqp_via_proxy) = rabbitmq_proxy().await;
    let env = [
        ("OUTBOX_RELAY_DATABASE__URL", db.url.clone()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_via_proxy),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
        ("OUTBOX_RELAY_RETRY__MAX_ATTEMPTS", "2".into()),
        ("OUTBOX_RELAY_RELAY__POLL_INTERVAL", "100ms".into()),
    ];
    let relay = RelayProcess::spawn(&env);
    let http = relay.http_addr().await;
    let client = db.client().await;
    for i in 0..10 {
        db.insert(&client, &format!("a-{}", i % 3), "before").await;
    }
    eventually("first events dispatched", || async {
        db.count(&client, "dispatched").await == 10
    })
    .await;
    assert_eq!(http_get(http, "/readyz").await.0, 200);

    // WHEN the broker becomes unreachable and more events are written
    proxy.cut();
    for i in 0..20 {
        db.insert(&client, &format!("a-{}", i % 3), "during").await;
    }

    // THEN /readyz says 503, the broker gauge is 0, and the relay keeps trying to reconnect
    eventually("readyz 503", || async {
        http_get(http, "/readyz").await.0 == 503
    })
    .await;
    eventually("several reconnect attempts", || async {
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(gauge(&metrics, "outbox_broker_up"), 0, "{metrics}");
    // AND no attempt was counted, nothing went dead
    assert_eq!(attempts_and_dead(&client).await, (0, 0));

    // WHEN the broker is back
    proxy.restore();

    // THEN the relay resumes by itself and delivers everything, each event once
    eventually("all dispatched", || async {
        db.count(&client, "dispatched").await == 30
    })
    .await;
    eventually("readyz 200", || async {
        http_get(http, "/readyz").await.0 == 200
    })
    .await;
    let messages = drain_queue(&broker).await;
    let deliveries = count_deliveries(&messages);
    assert_eq!(deliveries.unique, 30);
    assert!(
        deliveries.duplicates.is_empty(),
        "{:?}",
        deliveries.duplicates
    );

    // AND the logs hold one line per state change, none per event
    assert_eq!(
        relay.logged("broker unavailable; publishing paused, reconnecting with backoff"),
        1
    );
    assert_eq!(relay.logged("broker connected; publishing"), 2); // start-up + recovery
    assert_eq!(relay.logged("publish failed; will retry"), 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_answering_pauses_publishing_and_cannot_block_shutdown() {
    // GIVEN a relay reaching RabbitMQ through a proxy, relay.publish_timeout = 300 ms and
    // max_attempts = 1 (any counted attempt would kill an event)
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let (proxy, amqp_via_proxy) = rabbitmq_proxy().await;
    let mut config = relay_config(&db, &broker);
    config.broker.rabbitmq.url = amqp_via_proxy;
    config.relay.publish_timeout = Duration::from_millis(300);
    config.retry.max_attempts = 1;
    let relay = start_relay(&config);
    let client = db.client().await;
    db.insert(&client, "s-0", "before").await;
    eventually("first event dispatched", || async {
        db.count(&client, "dispatched").await == 1
    })
    .await;

    // WHEN the broker stops answering (connections stay open, nothing comes back) and events
    // are written
    proxy.stall();
    for i in 0..5 {
        db.insert(&client, &format!("s-{i}"), "during").await;
    }

    // THEN the missing confirms are a broker outage: paused, not ready, no attempt counted
    eventually("relay not ready", || async { !relay.health.ready() }).await;
    assert!(
        relay
            .metrics
            .render()
            .contains("outbox_publish_failures_total{reason=\"timeout\"}")
    );
    let max_attempts: i32 = client
        .query_one("SELECT coalesce(max(attempts), 0) FROM outbox_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max_attempts, 0);
    assert_eq!(db.count(&client, "dead").await, 0);

    // WHEN it answers again THEN everything is delivered
    proxy.restore();
    eventually("all dispatched", || async {
        db.count(&client, "dispatched").await == 6
    })
    .await;

    // WHEN it stops answering again, and the relay is asked to shut down while its reconnect
    // attempts hang on the silent broker
    proxy.stall();
    db.insert(&client, "s-9", "last").await;
    eventually("relay not ready again", || async { !relay.health.ready() }).await;
    let connections = proxy.accepted.load(std::sync::atomic::Ordering::SeqCst);
    eventually("a reconnect attempt is hanging", || async {
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) > connections
    })
    .await;

    // THEN it still stops (RunningRelay::stop fails the test if it does not)
    relay.stop().await;
    assert_eq!(db.count(&client, "dead").await, 0);
    proxy.cut();
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_closing_the_connection_pauses_and_reconnects_without_attempts() {
    // GIVEN a relay whose RabbitMQ connection we can find on the server (through a proxy that
    // records its upstream ports) and that has delivered a first event
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let (proxy, amqp_via_proxy) = rabbitmq_proxy().await;
    let mut config = relay_config(&db, &broker);
    config.broker.rabbitmq.url = amqp_via_proxy;
    let relay = start_relay(&config);
    let client = db.client().await;
    let first = db.insert(&client, "a-1", "first").await;
    assert_eq!(receive_n(&mut rx, 1).await[0].message_id, first.to_string());

    // WHEN RabbitMQ closes that connection (`rabbitmqctl close_connection`)
    let closed = rabbitmq_close_connections(&proxy.upstream_ports()).await;
    assert!(
        closed >= 1,
        "the relay's connection was not found on the server"
    );

    // THEN the idle relay notices and reconnects before it has anything to publish
    eventually("reconnected while idle", || async {
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;

    // WHEN more events of the same aggregate are written
    let mut later = Vec::new();
    for i in 0..5 {
        later.push(db.insert(&client, "a-1", &format!("after-{i}")).await);
    }

    // THEN the relay reconnects by itself and delivers them in order
    let got: Vec<String> = receive_n(&mut rx, 5)
        .await
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    let want: Vec<String> = later.iter().map(ToString::to_string).collect();
    assert_eq!(got, want);
    // AND the close counted no attempt against any event
    eventually("all dispatched", || async {
        db.count(&client, "dispatched").await == 6
    })
    .await;
    let attempts: i64 = client
        .query_one("SELECT sum(attempts) FROM outbox_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 0);
    relay.stop().await;
    broker.cleanup().await;
}
