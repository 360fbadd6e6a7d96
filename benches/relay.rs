//! The relay benchmark: one run measures the raw limits of this machine and the relay against
//! them, side by side (see the README's Performance section).
//!
//! `cargo bench --bench relay -- [--events N] [--payload-bytes B] [--batch-size S]
//!  [--replicas R] [--latency-seconds T] [--rate R] [--producer-seconds T] [--sqs]
//!  [--skip-broker] [--skip-store] [--skip-drain] [--skip-latency] [--skip-producers]
//!  [--sqs-events N]`
//!
//! Needs Postgres and RabbitMQ as in the tests (`scripts/services.sh`); `--sqs` adds part 7,
//! the SQS variant against the emulator at `OUTBOX_TEST_SQS` (default moto on
//! 127.0.0.1:4566): the emulator's own SendMessageBatch rate next to the relay's drain. Every part uses its own database and exchange/queue.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use outbox_relay::store::{DispatchMode, Store, TableName, connect::Connector, migrate};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

struct Args {
    events: usize,
    payload: usize,
    batch: usize,
    replicas: usize,
    latency_secs: u64,
    rate: u64,
    producer_secs: u64,
    sqs: bool,
    sqs_events: usize,
    skip: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        events: 100_000,
        payload: 500,
        batch: 500,
        replicas: 1,
        latency_secs: 10,
        rate: 1000,
        producer_secs: 5,
        sqs: false,
        sqs_events: 1_000,
        skip: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("number")
        };
        match flag.as_str() {
            "--events" => a.events = num() as usize,
            "--payload-bytes" => a.payload = num() as usize,
            "--batch-size" => a.batch = num() as usize,
            "--replicas" => a.replicas = num() as usize,
            "--latency-seconds" => a.latency_secs = num(),
            "--rate" => a.rate = num(),
            "--producer-seconds" => a.producer_secs = num(),
            "--sqs" => a.sqs = true,
            "--sqs-events" => a.sqs_events = num() as usize,
            "--bench" => {}
            s if s.starts_with("--skip-") => a.skip.push(s.trim_start_matches("--skip-").into()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn pg_server() -> String {
    std::env::var("OUTBOX_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}
fn amqp() -> String {
    std::env::var("OUTBOX_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A fresh, migrated database; returns its name and URL.
async fn fresh_db() -> (String, String) {
    let name = format!("outbox_bench_{}", Uuid::new_v4().simple());
    connect(&format!("{}/postgres", pg_server()))
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{}/{name}", pg_server());
    let mut client = connect(&url).await;
    migrate::migrate(&mut client, &TableName::parse("outbox_events").unwrap())
        .await
        .unwrap();
    (name, url)
}

async fn drop_db(name: &str) {
    let _ = connect(&format!("{}/postgres", pg_server()))
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

async fn prefill(url: &str, events: usize, payload: usize) {
    let client = connect(url).await;
    let pad = "x".repeat(payload.saturating_sub(40));
    client
        .execute(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', (i % 10000)::text, 'created', jsonb_build_object('i', i, 'pad', $2::text) \
             FROM generate_series(1, $1::int) i",
            &[&(events as i32), &pad],
        )
        .await
        .unwrap();
    client
        .batch_execute("VACUUM ANALYZE outbox_events")
        .await
        .unwrap();
}

/// Declares a durable exchange + durable queue bound with `#`.
async fn broker_setup(conn: &Connection) -> (String, String) {
    let ch = conn.create_channel().await.unwrap();
    let id = Uuid::new_v4().simple().to_string();
    let (exchange, queue) = (format!("bench-{id}"), format!("bench-q-{id}"));
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (exchange, queue)
}

async fn broker_cleanup(conn: &Connection, exchange: &str, queue: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch.queue_delete(queue.into(), Default::default()).await;
    let _ = ch
        .exchange_delete(exchange.into(), Default::default())
        .await;
}

/// 1. Raw broker limit: lapin, persistent messages, `window` outstanding confirms.
async fn raw_broker(n: usize, payload: usize, window: usize) -> f64 {
    let conn = Connection::connect(&amqp(), ConnectionProperties::default())
        .await
        .unwrap();
    let (exchange, queue) = broker_setup(&conn).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = vec![b'x'; payload];
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                "order.created".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(i.to_string().into()),
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() >= window {
            assert!(pending.pop_front().unwrap().await.unwrap().is_ack());
        }
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    broker_cleanup(&conn, &exchange, &queue).await;
    rate
}

/// 2. Raw store limit: the relay's claim + mark SQL, no broker.
async fn raw_store(n: usize, payload: usize, batch: usize) -> f64 {
    let (name, url) = fresh_db().await;
    prefill(&url, n, payload).await;
    let connector = Connector::new(&url, None, "bench", Duration::from_secs(5)).unwrap();
    let store = Store::new(
        connector.pool(4).unwrap(),
        TableName::parse("outbox_events").unwrap(),
        DispatchMode::Mark,
    );
    let all: Vec<i32> = (0..64).collect();
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let events = store.claim(0, batch, Some((&all, 64))).await.unwrap();
        if events.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        done += store.mark_dispatched(&ids).await.unwrap() as usize;
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    drop_db(&name).await;
    rate
}

fn spawn_relay(url: &str, exchange: &str, batch: usize, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    cmd.env("OUTBOX_RELAY_DATABASE__URL", url)
        .env("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp())
        .env("OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE", exchange)
        .env("OUTBOX_RELAY_RELAY__BATCH_SIZE", batch.to_string())
        .env("OUTBOX_RELAY_METRICS__LISTEN", "127.0.0.1:0")
        .env("OUTBOX_RELAY_RELAY__REBALANCE_INTERVAL", "500ms")
        .env("OUTBOX_RELAY_LOG__LEVEL", "warn")
        .envs(extra.iter().copied())
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.spawn().unwrap()
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Whether any event is still pending. Cheap on purpose (the first pending row through the
/// partial index, every 50 ms): a `count(*)` over a 100k backlog every few ms would take CPU
/// from the relay it measures.
async fn any_pending(client: &Client) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM outbox_events WHERE status = 'pending')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// 3 + 6. The relay draining a pre-written backlog; events/s and peak RSS.
async fn relay_drain(n: usize, payload: usize, batch: usize, replicas: usize) -> (f64, f64) {
    let (name, url) = fresh_db().await;
    prefill(&url, n, payload).await;
    let conn = Connection::connect(&amqp(), ConnectionProperties::default())
        .await
        .unwrap();
    let (exchange, queue) = broker_setup(&conn).await;
    let client = connect(&url).await;
    let started = Instant::now();
    let children: Vec<Child> = (0..replicas)
        .map(|_| spawn_relay(&url, &exchange, batch, &[]))
        .collect();
    let mut rss: f64 = 0.0;
    while any_pending(&client).await {
        for c in &children {
            rss = rss.max(peak_rss_mb(c.id()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    for c in &children {
        rss = rss.max(peak_rss_mb(c.id()));
    }
    children.into_iter().for_each(stop);
    broker_cleanup(&conn, &exchange, &queue).await;
    drop_db(&name).await;
    (rate, rss)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// 4. Commit-to-consumer latency at a steady rate, one event per transaction.
async fn latency(secs: u64, rate: u64) -> (f64, f64, f64, usize) {
    let (name, url) = fresh_db().await;
    let conn = Connection::connect(&amqp(), ConnectionProperties::default())
        .await
        .unwrap();
    let (exchange, queue) = broker_setup(&conn).await;
    let relay = spawn_relay(&url, &exchange, 500, &[]);
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let total = (secs * rate) as usize;
    let commits: Arc<std::sync::Mutex<std::collections::HashMap<i64, u64>>> = Default::default();
    // Let the relay start and go idle before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let producer = {
        let url = url.clone();
        let commits = commits.clone();
        tokio::spawn(async move {
            let client = connect(&url).await;
            let stmt = client
                .prepare(
                    "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('order', $1, 'created', jsonb_build_object('k', $2::int8))",
                )
                .await
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for k in 0..total as i64 {
                tick.tick().await;
                client
                    .execute(&stmt, &[&(k % 1000).to_string(), &k])
                    .await
                    .unwrap();
                commits.lock().unwrap().insert(k, now_micros());
            }
        })
    };
    let mut lat = Vec::with_capacity(total);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < total {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let Ok(Some(Ok(d))) = d else { break };
        let arrived = now_micros();
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        let k = body["k"].as_i64().unwrap();
        if seen.insert(k) {
            let committed = loop {
                if let Some(t) = commits.lock().unwrap().get(&k).copied() {
                    break t;
                }
                tokio::task::yield_now().await;
            };
            lat.push(arrived.saturating_sub(committed) as f64 / 1000.0);
        }
    }
    producer.await.unwrap();
    stop(relay);
    broker_cleanup(&conn, &exchange, &queue).await;
    drop_db(&name).await;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    (pct(0.5), pct(0.99), *lat.last().unwrap_or(&0.0), lat.len())
}

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

async fn producers(secs: u64) -> (f64, f64, f64, f64) {
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
    let conn = Connection::connect(&amqp(), ConnectionProperties::default())
        .await
        .unwrap();
    let (exchange, queue) = broker_setup(&conn).await;
    let relay = spawn_relay(&url3, &exchange, 500, &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ours = producer_rate(&url3, secs).await;
    stop(relay);
    broker_cleanup(&conn, &exchange, &queue).await;
    drop_db(&n3).await;
    (bare, always, trigger_only, ours)
}

fn sqs_endpoint() -> String {
    std::env::var("OUTBOX_TEST_SQS").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

fn sqs_client() -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(sqs_endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

async fn sqs_queue(client: &aws_sdk_sqs::Client) -> String {
    client
        .create_queue()
        .queue_name(format!("outbox-bench-{}", Uuid::new_v4().simple()))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

/// SendMessageBatch calls in flight for the raw measurement: the emulator's best here (8 did
/// 197 msg/s, 32 did 161: moto serializes sends, more concurrency only queues). The relay
/// itself may have up to 16 calls per batch in flight, 4 batches at once.
const SQS_IN_FLIGHT: usize = 8;

/// 7a. The emulator's own limit: SendMessageBatch of 10 entries, 8 calls in flight, each
/// entry exactly what the relay sends for such an event (same body and attributes).
async fn raw_sqs(n: usize, payload: usize) -> f64 {
    use outbox_relay::{broker::sqs::message, store::OutboxEvent};
    let client = sqs_client();
    let queue = sqs_queue(&client).await;
    let body = serde_json::json!({ "i": 0, "pad": "x".repeat(payload.saturating_sub(40)) });
    let entries: Vec<_> = (0..n)
        .map(|i| {
            let event = OutboxEvent {
                id: Uuid::new_v4(),
                seq: i as i64,
                aggregate_type: "order".into(),
                aggregate_id: (i % 10_000).to_string(),
                event_type: "created".into(),
                payload: body.to_string(),
                headers: vec![],
                created_at: SystemTime::now(),
                attempts: 0,
                bucket: 0,
            };
            message::build(&event, i % 10, false, 1 << 20)
                .unwrap()
                .entry
        })
        .collect();
    let batches: Vec<Vec<_>> = entries.chunks(10).map(<[_]>::to_vec).collect();
    let started = Instant::now();
    futures::stream::iter(batches)
        .map(|batch| {
            let client = client.clone();
            let queue = queue.clone();
            async move {
                let out = client
                    .send_message_batch()
                    .queue_url(queue)
                    .set_entries(Some(batch))
                    .send()
                    .await
                    .unwrap();
                assert!(out.failed().is_empty(), "{:?}", out.failed());
            }
        })
        .buffer_unordered(SQS_IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = client.delete_queue().queue_url(queue).send().await;
    rate
}

/// 7b. The relay draining a backlog into an emulator queue.
async fn relay_drain_sqs(n: usize, payload: usize, batch: usize) -> f64 {
    let (name, url) = fresh_db().await;
    prefill(&url, n, payload).await;
    let client = sqs_client();
    let queue = sqs_queue(&client).await;
    let db = connect(&url).await;
    let started = Instant::now();
    let endpoint = sqs_endpoint();
    let relay = spawn_relay(
        &url,
        "unused",
        batch,
        &[
            ("OUTBOX_RELAY_BROKER__KIND", "sqs"),
            ("OUTBOX_RELAY_BROKER__SQS__QUEUE_URL", queue.as_str()),
            ("OUTBOX_RELAY_BROKER__SQS__ENDPOINT_URL", endpoint.as_str()),
            ("OUTBOX_RELAY_BROKER__SQS__REGION", "us-east-1"),
            // The emulator slows down as its queue grows (moto: O(queue length) per send);
            // a long timeout keeps its slowness from reading as an outage.
            ("OUTBOX_RELAY_RELAY__PUBLISH_TIMEOUT", "60s"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    while any_pending(&db).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop(relay);
    let _ = client.delete_queue().queue_url(queue).send().await;
    drop_db(&name).await;
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let a = args();
    let skip = |p: &str| a.skip.iter().any(|s| s == p);
    println!(
        "outbox-relay benchmark: {} events, {} B payload, batch {}, {} replica(s), {} cores",
        a.events,
        a.payload,
        a.batch,
        a.replicas,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let broker = if skip("broker") {
        f64::NAN
    } else {
        raw_broker(a.events, a.payload, 1000).await
    };
    let serial = if skip("broker") {
        f64::NAN
    } else {
        raw_broker(a.events.min(2000), a.payload, 1).await
    };
    let store = if skip("store") {
        f64::NAN
    } else {
        raw_store(a.events, a.payload, a.batch).await
    };
    println!(
        "1. raw broker (lapin, 1000 outstanding confirms) {broker:>10.0} msg/s   (serial confirms: {serial:.0} msg/s)"
    );
    println!("2. raw store (relay claim + mark SQL, no broker) {store:>10.0} rows/s");
    if !skip("drain") {
        let (rate, rss) = relay_drain(a.events, a.payload, a.batch, a.replicas).await;
        let limit = broker.min(store);
        println!(
            "3. relay drain ({} replica(s))                   {rate:>10.0} events/s  = {:.2} x min(1, 2) = {limit:.0}",
            a.replicas,
            rate / limit
        );
        println!("6. relay peak RSS during the drain               {rss:>10.1} MB");
    }
    if !skip("latency") {
        let (p50, p99, max, n) = latency(a.latency_secs, a.rate).await;
        println!(
            "4. notify wake-up latency at {} events/s ({n} events): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            a.rate
        );
    }
    if !skip("producers") {
        let (bare, always, trigger_only, ours) = producers(a.producer_secs).await;
        println!(
            "5. producer commits/s (4 conns, 1 row/tx): no trigger {bare:.0} | always-NOTIFY trigger {always:.0} ({:.2}x) | relay's trigger, relay busy (no NOTIFY) {trigger_only:.0} ({:.2}x) | relay's trigger + running relay draining them {ours:.0} ({:.2}x)",
            always / bare,
            trigger_only / bare,
            ours / bare
        );
    }
    if a.sqs {
        let raw = raw_sqs(a.sqs_events, a.payload).await;
        let relay = relay_drain_sqs(a.sqs_events, a.payload, a.batch).await;
        println!(
            "7. SQS emulator ({} events): raw SendMessageBatch (10/call, {SQS_IN_FLIGHT} in flight) {raw:.0} msg/s | relay drain {relay:.0} events/s = {:.2} x raw",
            a.sqs_events,
            relay / raw
        );
    }
}
