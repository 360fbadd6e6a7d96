//! The relay benchmark: one run measures the raw limits of this machine and the relay against
//! them, side by side (see the README's Performance section).
//!
//! `cargo bench --bench relay -- [--events N] [--aggregates N] [--analyze] [--payload-bytes B]
//!  [--batch-size S] [--replicas R] [--drain-timeout T] [--latency-seconds T] [--rate R]
//!  [--producer-seconds T] [--sqs] [--sqs-events N] [--skip-broker] [--skip-store]
//!  [--skip-drain] [--skip-latency] [--skip-producers]`
//! `cargo bench --bench relay -- --matrix [--matrix-scale F] [...]`
//! (`-- --help` lists them.)
//!
//! The backlog is spread over `--aggregates` aggregates (default 1,000) round-robin in `seq`
//! order, written by one INSERT ... SELECT and, unless `--analyze`, measured as loaded: no
//! statistics, as a backlog arrives in production between autovacuum runs. `--matrix` runs
//! the raw broker limit and the confirm round trips once, then the drain for aggregates 10 /
//! 100 / 1,000 / 100,000 at a 50k backlog and 1,000 at 500k, as one table against them.
//!
//! Needs Postgres and RabbitMQ as in the tests (`scripts/services.sh`); `--sqs` adds part 7,
//! the SQS variant against the emulator at `OUTBOX_TEST_SQS` (default moto on
//! 127.0.0.1:4566): the emulator's own SendMessageBatch rate next to the relay's drain. Every
//! part uses its own database and exchange/queue. The relay runs as the release binary with
//! its default config but for what the benchmark sets (database, exchange, batch size,
//! metrics port, rebalance interval, log level); `OUTBOX_RELAY_*` variables in the
//! environment reach it too (e.g. `OUTBOX_RELAY_RELAY__MODE=poll`) and are printed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    collections::VecDeque,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, builder::RangedU64ValueParser};
use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use outbox_relay::config::TableName;
use outbox_relay::store::{DispatchMode, Store, connect::Connector, migrate};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// The relay benchmark (see the README's Performance section).
#[derive(Parser, Debug)]
#[command(name = "relay-bench", bin_name = "cargo bench --bench relay --")]
struct Args {
    /// Events in the backlog of parts 1-3 (raw broker, raw store, relay drain).
    #[arg(long, default_value_t = 100_000, value_parser = positive())]
    events: usize,
    /// Payload size of each event.
    #[arg(long, default_value_t = 500)]
    payload_bytes: usize,
    /// The relay's `relay.batch_size` (and the raw store's claim size).
    #[arg(long, default_value_t = 500, value_parser = positive())]
    batch_size: usize,
    /// Relay processes draining one table.
    #[arg(long, default_value_t = 1, value_parser = positive())]
    replicas: usize,
    /// Distinct aggregate_ids the prefilled backlog is spread over, round-robin in `seq`
    /// order (event i belongs to aggregate i mod N): each aggregate gets ~events/N events,
    /// interleaved with all others.
    #[arg(long, default_value_t = 1_000, value_parser = positive())]
    aggregates: usize,
    /// VACUUM ANALYZE the table after the prefill. Off by default: the table is measured
    /// as loaded (one INSERT ... SELECT, no statistics), as a backlog arrives in production
    /// between autovacuum runs.
    #[arg(long)]
    analyze: bool,
    /// Give up on a drain after this many seconds and report the rate so far.
    #[arg(long, default_value_t = 600, value_parser = positive_u64())]
    drain_timeout: u64,
    /// Part 4's duration.
    #[arg(long, default_value_t = 10, value_parser = positive_u64())]
    latency_seconds: u64,
    /// Part 4's event rate (one event per transaction).
    #[arg(long, default_value_t = 1000, value_parser = positive_u64())]
    rate: u64,
    /// Part 5's duration per variant.
    #[arg(long, default_value_t = 5, value_parser = positive_u64())]
    producer_seconds: u64,
    /// Run part 7, the SQS variant against the emulator at OUTBOX_TEST_SQS.
    #[arg(long)]
    sqs: bool,
    /// Events of part 7.
    #[arg(long, default_value_t = 1_000, value_parser = positive())]
    sqs_events: usize,
    /// Instead of parts 2-7: the raw broker limit, the confirm round trip at 1/10/100
    /// outstanding confirms, and the relay drain for aggregates 10 / 100 / 1,000 / 100,000
    /// at a 50,000 backlog and 1,000 aggregates at a 500,000 backlog, as one table.
    #[arg(long)]
    matrix: bool,
    /// Multiplies the matrix's backlogs (e.g. 0.05 for a smoke run); aggregates stay.
    #[arg(long, default_value_t = 1.0, value_parser = positive_f64)]
    matrix_scale: f64,
    /// Skip part 1 (raw broker).
    #[arg(long)]
    skip_broker: bool,
    /// Skip part 2 (raw store).
    #[arg(long)]
    skip_store: bool,
    /// Skip parts 3 and 6 (relay drain, its peak RSS).
    #[arg(long)]
    skip_drain: bool,
    /// Skip part 4 (notify wake-up latency).
    #[arg(long)]
    skip_latency: bool,
    /// Skip part 5 (producers' commit rate).
    #[arg(long)]
    skip_producers: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

fn positive_u64() -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::<u64>::new().range(1..)
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
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

/// A backlog to prefill: `events` rows of ~`payload` bytes spread over `aggregates`
/// aggregate_ids round-robin in `seq` order, written by one INSERT ... SELECT (one
/// transaction, one call of the statement trigger).
#[derive(Clone, Copy, Debug)]
struct Backlog {
    events: usize,
    aggregates: usize,
    payload: usize,
    /// VACUUM ANALYZE after the load; otherwise the table has no statistics, as loaded.
    analyze: bool,
}

async fn prefill(url: &str, b: Backlog) {
    let client = connect(url).await;
    let pad = "x".repeat(b.payload.saturating_sub(40));
    client
        .execute(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', (i % $2::int8)::text, 'created', jsonb_build_object('i', i, 'pad', $3::text) \
             FROM generate_series(1, $1::int8) i",
            &[&(b.events as i64), &(b.aggregates as i64), &pad],
        )
        .await
        .unwrap();
    if b.analyze {
        client
            .batch_execute("VACUUM ANALYZE outbox_events")
            .await
            .unwrap();
    }
    // Write the load's dirty pages out now rather than in a checkpoint during the
    // measurement (needs superuser or pg_checkpoint; skipped otherwise). Neither statistics
    // nor the visibility map change: the table is still "as loaded".
    let _ = client.batch_execute("CHECKPOINT").await;
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

/// Confirms outstanding in the raw broker limit (part 1).
const RAW_WINDOW: usize = 1000;

/// One raw publishing run: its rate and, when timed, each message's confirm round trip.
#[derive(Clone, Copy, Debug)]
struct BrokerRun {
    rate: f64,
    /// Publish call to confirm, median and 99th percentile, in milliseconds (NaN untimed).
    rtt_p50_ms: f64,
    rtt_p99_ms: f64,
}

impl BrokerRun {
    const SKIPPED: BrokerRun = BrokerRun {
        rate: f64::NAN,
        rtt_p50_ms: f64::NAN,
        rtt_p99_ms: f64::NAN,
    };
}

/// Which message properties a raw publishing run sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Exactly what the relay sends for a backlog event (`message_id`, `content_type`, `type`,
    /// `timestamp`, the three `x-` headers): the limit the relay is measured against, since
    /// the broker's cost per message grows with its properties.
    Relay,
    /// Only `delivery_mode` and `message_id`: the broker's best case, printed beside.
    Minimal,
}

impl Shape {
    fn properties(self, i: usize) -> BasicProperties {
        match self {
            Shape::Minimal => BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(i.to_string().into()),
            Shape::Relay => outbox_relay::broker::rabbitmq::message_properties(
                &outbox_relay::event::OutboxEvent {
                    id: Uuid::new_v4(),
                    seq: i as i64,
                    aggregate_type: "order".into(),
                    aggregate_id: (i % RAW_WINDOW).to_string(),
                    event_type: "created".into(),
                    payload: String::new(),
                    headers: vec![],
                    created_at: SystemTime::now(),
                    attempts: 0,
                    bucket: 0,
                },
            ),
        }
    }
}

/// How a raw publishing run treats its confirms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Confirms {
    /// Awaited in order by the publishing loop: the raw limit (part 1).
    Plain,
    /// Each awaited by a task of its own that notes when it arrived, so the round trip
    /// (publish call to confirm) is exact however far behind the loop is; the loop's window
    /// is the same. The tasks cost the broker some CPU on 2 cores (7-20 % of the rate in an
    /// A/B run with 1,000 outstanding), hence apart from the raw limit.
    Timed,
}

/// Part 1, the raw broker limit: lapin, persistent messages, `window` outstanding confirms
/// (the oldest is awaited once `window` are out); with [`Confirms::Timed`], the confirm
/// round trip at that window instead.
async fn raw_broker(
    n: usize,
    payload: usize,
    window: usize,
    confirms: Confirms,
    shape: Shape,
) -> BrokerRun {
    let (conn, exchange, queue, ch) = confirm_channel().await;
    let body = vec![b'x'; payload];
    let mut rtts = Vec::with_capacity(if confirms == Confirms::Timed { n } else { 0 });
    let mut plain = VecDeque::new();
    let mut timed = VecDeque::new();
    let started = Instant::now();
    for i in 0..n {
        let sent = Instant::now();
        let confirm = publish(&ch, &exchange, &body, shape.properties(i)).await;
        match confirms {
            Confirms::Plain => {
                plain.push_back(confirm);
                if plain.len() >= window {
                    assert!(plain.pop_front().unwrap().await.unwrap().is_ack());
                }
            }
            Confirms::Timed => {
                timed.push_back(tokio::spawn(async move {
                    let ack = confirm.await.unwrap().is_ack();
                    (ack, sent.elapsed())
                }));
                if timed.len() >= window {
                    let (ack, rtt) = timed.pop_front().unwrap().await.unwrap();
                    assert!(ack);
                    rtts.push(rtt);
                }
            }
        }
    }
    for c in plain {
        assert!(c.await.unwrap().is_ack());
    }
    for c in timed {
        let (ack, rtt) = c.await.unwrap();
        assert!(ack);
        rtts.push(rtt);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    broker_cleanup(&conn, &exchange, &queue).await;
    rtts.sort_unstable();
    let ms = |p: f64| {
        rtts.get(((rtts.len().max(1) - 1) as f64 * p) as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    BrokerRun {
        rate,
        rtt_p50_ms: ms(0.5),
        rtt_p99_ms: ms(0.99),
    }
}

/// Messages for a round-trip measurement with `window` confirms outstanding: enough for a
/// steady state, about a second or two here.
fn rtt_messages(window: usize) -> usize {
    (window * 200).clamp(2_000, 20_000)
}

/// The order bound for `aggregates` aggregates: each aggregate has at most one event in
/// flight, so at most `aggregates` confirms are outstanding and at most `aggregates` per
/// round trip can be confirmed (Little's law), the round trip measured with that many
/// confirms outstanding. None when the aggregates do not bind (at least the raw window).
fn order_bound(aggregates: usize, rtt: &BrokerRun) -> Option<f64> {
    (aggregates < RAW_WINDOW && rtt.rtt_p50_ms.is_finite())
        .then(|| aggregates as f64 / (rtt.rtt_p50_ms / 1000.0))
}

/// One mandatory, persistent-by-properties publish to `exchange` with the routing key every
/// benchmark message uses; returns its confirm.
async fn publish(
    ch: &lapin::Channel,
    exchange: &str,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::PublisherConfirm {
    ch.basic_publish(
        exchange.into(),
        "order.created".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        body,
        properties,
    )
    .await
    .unwrap()
}

/// A connection with a fresh exchange and queue (bound with `#`) and a confirm-mode channel.
async fn confirm_channel() -> (Connection, String, String, lapin::Channel) {
    let conn = Connection::connect(&amqp(), ConnectionProperties::default())
        .await
        .unwrap();
    let (exchange, queue) = broker_setup(&conn).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, exchange, queue, ch)
}

/// A fresh database holding backlog `b`, and the relay's store on it (pool of 4).
async fn prefilled_store(b: Backlog) -> (String, Store) {
    let (name, url) = fresh_db().await;
    prefill(&url, b).await;
    let connector = Connector::new(&url, None, "bench", Duration::from_secs(5)).unwrap();
    let store = Store::new(
        connector.pool(4).unwrap(),
        TableName::parse("outbox_events").unwrap(),
        DispatchMode::Mark,
    );
    (name, store)
}

/// 2. Raw store limit: the relay's claim + mark SQL, no broker.
async fn raw_store(b: Backlog, batch: usize) -> f64 {
    let n = b.events;
    let (name, store) = prefilled_store(b).await;
    let all: Vec<i32> = (0..64).collect();
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let events = store
            .read_pending(0, batch, Some((&all, 64)))
            .await
            .unwrap();
        if events.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = events.iter().map(|r| r.event.id).collect();
        done += store.mark_dispatched(&ids).await.unwrap() as usize;
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    drop_db(&name).await;
    rate
}

/// The raw limit of broker and store together on this machine: no relay, one loop that reads
/// the backlog in `seq` order (the relay's read), publishes each row with the relay's
/// properties on one channel with [`RAW_WINDOW`] confirms outstanding, and marks confirmed
/// rows dispatched in batches (the relay's mark) on a task of its own. No ordering, no
/// scheduling: what the relay's work costs the two servers sharing the machine's cores.
async fn raw_combined(b: Backlog, batch: usize) -> f64 {
    let n = b.events;
    let (name, store) = prefilled_store(b).await;
    let (conn, exchange, queue, ch) = confirm_channel().await;
    let (marks, mut to_mark) = tokio::sync::mpsc::channel::<Vec<Uuid>>(4);
    let marker = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut marked = 0;
            while let Some(ids) = to_mark.recv().await {
                marked += store.mark_dispatched(&ids).await.unwrap() as usize;
            }
            marked
        })
    };
    let all: Vec<i32> = (0..64).collect();
    let started = Instant::now();
    let mut cursor = 0;
    let mut outstanding = VecDeque::new();
    let mut confirmed = Vec::with_capacity(batch);
    loop {
        let rows = store
            .read_pending(cursor, batch, Some((&all, 64)))
            .await
            .unwrap();
        let Some(last) = rows.last() else { break };
        cursor = last.event.seq;
        for row in rows {
            let event = row.event;
            let properties = outbox_relay::broker::rabbitmq::message_properties(&event);
            let confirm = publish(&ch, &exchange, event.payload.as_bytes(), properties).await;
            outstanding.push_back((event.id, confirm));
            while outstanding.len() >= RAW_WINDOW {
                let (id, confirm) = outstanding.pop_front().unwrap();
                assert!(confirm.await.unwrap().is_ack());
                confirmed.push(id);
                if confirmed.len() >= batch {
                    marks.send(std::mem::take(&mut confirmed)).await.unwrap();
                }
            }
        }
    }
    for (id, confirm) in outstanding {
        assert!(confirm.await.unwrap().is_ack());
        confirmed.push(id);
    }
    marks.send(confirmed).await.unwrap();
    drop(marks);
    let marked = marker.await.unwrap();
    let rate = marked as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        marked, n,
        "the combined raw run marked fewer rows than it was given"
    );
    broker_cleanup(&conn, &exchange, &queue).await;
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
    // Environment variables of the caller win (e.g. OUTBOX_RELAY_LOG__LEVEL=debug with
    // OUTBOX_BENCH_RELAY_LOG=path to see the pipeline's state once a second).
    cmd.envs(std::env::vars().filter(|(k, _)| k.starts_with("OUTBOX_RELAY_")));
    if let Ok(path) = std::env::var("OUTBOX_BENCH_RELAY_LOG") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        cmd.stderr(file);
    }
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
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let _ = child.wait();
}

/// The first pending event at or after `from` (a `seq`), if any: the end-of-drain check,
/// cheap on purpose (one row through the partial pending index, every 50 ms; a `count(*)`
/// over a 100k backlog every few ms would take CPU from the relay it measures). The caller
/// passes the last answer as `from`: no row before it can be pending again (the backlog is
/// written before the relay starts, and a relay only ever takes a row out of `pending`, by
/// marking or deleting it), and the index scan then starts there instead of stepping over
/// the index entries of every row settled so far.
async fn first_pending(client: &Client, from: i64) -> Option<i64> {
    client
        .query_opt(
            "SELECT seq FROM outbox_events WHERE status = 'pending' AND seq >= $1 \
             ORDER BY seq LIMIT 1",
            &[&from],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Rows still pending and rows gone dead (a full count, for the end of a run only).
async fn pending_and_dead(client: &Client) -> (usize, usize) {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'pending'), \
                    count(*) FILTER (WHERE status = 'dead') FROM outbox_events",
            &[],
        )
        .await
        .unwrap();
    (row.get::<_, i64>(0) as usize, row.get::<_, i64>(1) as usize)
}

/// How a drain went.
#[derive(Clone, Copy, Debug)]
struct Drain {
    /// Events taken out of `pending` per second, from the relays' first message in the
    /// queue to the end (or the timeout); the relays' start-up is `startup_secs`.
    rate: f64,
    /// Spawn to first message (SQS: 0, the rate then includes the start-up).
    startup_secs: f64,
    /// Events taken out of `pending` by the end.
    settled: usize,
    /// Spawn to the end.
    secs: f64,
    /// Gave up at `--drain-timeout`, or a relay exited.
    timed_out: bool,
    /// Highest peak RSS of the relay processes.
    rss_mb: f64,
}

impl Drain {
    /// Events per second including the start-up.
    fn rate_with_startup(&self) -> f64 {
        self.settled as f64 / self.secs
    }

    fn note(&self, events: usize) -> String {
        if self.timed_out {
            format!(
                "  (gave up after {:.0} s: {} of {} events)",
                self.secs,
                thousands(self.settled as f64),
                thousands(events as f64)
            )
        } else {
            String::new()
        }
    }
}

/// Waits until no event is pending (or `timeout` after `started`, or a relay exits), noting
/// the peak RSS of the relays. The rate is counted from `first_publish`.
async fn wait_drained(
    client: &Client,
    events: usize,
    (started, first_publish): (Instant, Instant),
    timeout: Duration,
    relays: &mut [Child],
) -> Drain {
    let mut rss: f64 = 0.0;
    let mut from = 0;
    let mut timed_out = false;
    'poll: while let Some(seq) = first_pending(client, from).await {
        from = seq;
        for relay in relays.iter_mut() {
            rss = rss.max(peak_rss_mb(relay.id()));
            if let Ok(Some(status)) = relay.try_wait() {
                eprintln!("   !! relay {} exited: {status}", relay.id());
                timed_out = true;
                break 'poll;
            }
        }
        if started.elapsed() >= timeout {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = Instant::now();
    let settled = if timed_out {
        events - pending_and_dead(client).await.0
    } else {
        events
    };
    for relay in relays.iter() {
        rss = rss.max(peak_rss_mb(relay.id()));
    }
    Drain {
        rate: settled as f64 / (end - first_publish).as_secs_f64(),
        startup_secs: (first_publish - started).as_secs_f64(),
        settled,
        secs: (end - started).as_secs_f64(),
        timed_out,
        rss_mb: rss,
    }
}

/// Messages in `queue` (a passive declare: cheap for the broker).
async fn queue_len(ch: &lapin::Channel, queue: &str) -> usize {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count() as usize
}

/// 3 + 6. The relay draining a pre-written backlog in a fresh database and into a fresh
/// queue: events/s and peak RSS. Afterwards the queue is checked against the table: fewer
/// messages than events settled as dispatched is a loss, and says so.
async fn relay_drain(b: Backlog, batch: usize, replicas: usize, timeout: Duration) -> Drain {
    let (name, url) = fresh_db().await;
    prefill(&url, b).await;
    let conn = Connection::connect(&amqp(), ConnectionProperties::default())
        .await
        .unwrap();
    let (exchange, queue) = broker_setup(&conn).await;
    let client = connect(&url).await;
    let ch = conn.create_channel().await.unwrap();
    let started = Instant::now();
    let mut children: Vec<Child> = (0..replicas)
        .map(|_| spawn_relay(&url, &exchange, batch, &[]))
        .collect();
    // The relays' start-up (connecting, taking their buckets) is timed apart: the rate runs
    // from their first message in the queue, the steady drain.
    while queue_len(&ch, &queue).await == 0
        && started.elapsed() < timeout
        && children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_publish = Instant::now();
    let drain = wait_drained(
        &client,
        b.events,
        (started, first_publish),
        timeout,
        &mut children,
    )
    .await;
    children.into_iter().for_each(stop);
    let (pending, dead) = pending_and_dead(&client).await;
    let dispatched = b.events - pending - dead;
    let queued = queue_len(&ch, &queue).await;
    if queued < dispatched {
        eprintln!(
            "   !! LOSS: {dispatched} events settled as dispatched, the queue holds only {queued} messages"
        );
    }
    if dead > 0 {
        eprintln!("   !! {dead} events went dead");
    }
    broker_cleanup(&conn, &exchange, &queue).await;
    drop_db(&name).await;
    drain
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
async fn raw_sqs(n: usize, payload: usize, aggregates: usize) -> f64 {
    use outbox_relay::{broker::sqs::message, event::OutboxEvent};
    let client = sqs_client();
    let queue = sqs_queue(&client).await;
    let body = serde_json::json!({ "i": 0, "pad": "x".repeat(payload.saturating_sub(40)) });
    let entries: Vec<_> = (0..n)
        .map(|i| {
            let event = OutboxEvent {
                id: Uuid::new_v4(),
                seq: i as i64,
                aggregate_type: "order".into(),
                aggregate_id: (i % aggregates).to_string(),
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
async fn relay_drain_sqs(b: Backlog, batch: usize, timeout: Duration) -> Drain {
    let (name, url) = fresh_db().await;
    prefill(&url, b).await;
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
    let mut relays = [relay];
    let drain = wait_drained(&db, b.events, (started, started), timeout, &mut relays).await;
    let [relay] = relays;
    stop(relay);
    let _ = client.delete_queue().queue_url(queue).send().await;
    drop_db(&name).await;
    drain
}

/// `12345.6` as "12,346".
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

/// What this run is measured under: cores, the server's autovacuum, relay overrides.
async fn describe_setup(a: &Args) {
    let autovacuum: String = connect(&format!("{}/postgres", pg_server()))
        .await
        .query_one("SHOW autovacuum", &[])
        .await
        .unwrap()
        .get(0);
    let overrides: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OUTBOX_RELAY_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "{} cores; {} B payload, batch {}, {} replica(s); table {}; server autovacuum {autovacuum}; relay overrides: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        a.payload_bytes,
        a.batch_size,
        a.replicas,
        if a.analyze {
            "VACUUM ANALYZEd after the prefill"
        } else {
            "measured as loaded (no ANALYZE, no VACUUM)"
        },
        if overrides.is_empty() {
            "none".into()
        } else {
            overrides.join(" ")
        }
    );
}

/// The round trips printed as "1: 0.54 ms (p99 1.88; 1,800 msg/s) | 10: ...".
fn describe_rtts(rtts: &[(usize, BrokerRun)]) -> String {
    rtts.iter()
        .map(|(w, r)| {
            format!(
                "{w}: {:.2} ms (p99 {:.2}; {} msg/s)",
                r.rtt_p50_ms,
                r.rtt_p99_ms,
                thousands(r.rate)
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `--matrix`: the raw broker limit and the confirm round trips once, then the relay drain
/// over backlogs and aggregate counts, each in a fresh database and queue.
async fn matrix(a: &Args) {
    let scaled = |n: usize| ((n as f64 * a.matrix_scale).round() as usize).max(1);
    let (small, large) = (scaled(50_000), scaled(500_000));
    let backlog = |events, aggregates| Backlog {
        events,
        aggregates,
        payload: a.payload_bytes,
        analyze: a.analyze,
    };
    let timeout = Duration::from_secs(a.drain_timeout);
    println!(
        "outbox-relay benchmark matrix: backlogs {} and {} (scale {})",
        thousands(small as f64),
        thousands(large as f64),
        a.matrix_scale
    );
    describe_setup(a).await;
    let mut rtts: Vec<(usize, BrokerRun)> = Vec::new();
    let (raw, minimal) = if a.skip_broker {
        (BrokerRun::SKIPPED, BrokerRun::SKIPPED)
    } else {
        let n = small.max(10_000);
        let raw = raw_broker(
            n,
            a.payload_bytes,
            RAW_WINDOW,
            Confirms::Plain,
            Shape::Relay,
        )
        .await;
        let minimal = raw_broker(
            n,
            a.payload_bytes,
            RAW_WINDOW,
            Confirms::Plain,
            Shape::Minimal,
        )
        .await;
        for w in [1, 10, 100, RAW_WINDOW] {
            let run = raw_broker(
                rtt_messages(w),
                a.payload_bytes,
                w,
                Confirms::Timed,
                Shape::Relay,
            )
            .await;
            rtts.push((w, run));
        }
        (raw, minimal)
    };
    let both = if a.skip_broker || a.skip_store {
        f64::NAN
    } else {
        raw_combined(backlog(small, 1_000), a.batch_size).await
    };
    // The same at the large backlog: the broker's queue grows to the backlog's size (nothing
    // consumes it in the benchmark), which slows the broker itself.
    let both_large = if a.skip_broker || a.skip_store {
        f64::NAN
    } else {
        raw_combined(backlog(large, 1_000), a.batch_size).await
    };
    println!(
        "raw broker (lapin, {RAW_WINDOW} outstanding confirms, no Postgres, the relay's message properties): {} msg/s",
        thousands(raw.rate)
    );
    println!(
        "  (same with only delivery_mode and message_id: {} msg/s; \"x raw\" below is against the first)",
        thousands(minimal.rate)
    );
    println!(
        "raw broker and store together (read in seq order, publish, mark; no relay, no ordering): {} events/s (\"x both\" below)",
        thousands(both)
    );
    if !rtts.is_empty() {
        println!(
            "confirm round trip (publish call to confirm), p50 by confirms outstanding: {}",
            describe_rtts(&rtts)
        );
    }
    let rtt_at = |w: usize| {
        rtts.iter()
            .find(|(x, _)| *x == w)
            .map_or(BrokerRun::SKIPPED, |(_, r)| *r)
    };
    println!();
    println!(
        "{:>9} {:>10} {:>12} {:>7} {:>7} {:>7} {:>13} {:>11} {:>12} {:>8} {:>8} {:>7}",
        "backlog",
        "aggregates",
        "drain ev/s",
        "x raw",
        "x min",
        "x both",
        "target",
        "rtt p50 ms",
        "order bound",
        "x bound",
        "start s",
        "RSS MB"
    );
    let runs = [
        (small, 10, None),
        (small, 100, Some(0.5)),
        (small, 1_000, Some(0.8)),
        (small, 100_000, Some(0.8)),
        (large, 1_000, None),
    ];
    let mut results = Vec::new();
    for (events, aggregates, target) in runs {
        let d = relay_drain(
            backlog(events, aggregates),
            a.batch_size,
            a.replicas,
            timeout,
        )
        .await;
        let x_raw = d.rate / raw.rate;
        let rtt = rtt_at(aggregates);
        let bound = order_bound(aggregates, &rtt);
        println!(
            "{:>9} {:>10} {:>12} {:>7.2} {:>7.2} {:>7.2} {:>13} {:>11} {:>12} {:>8} {:>8.2} {:>7.1}{}",
            thousands(events as f64),
            thousands(aggregates as f64),
            thousands(d.rate),
            x_raw,
            d.rate / minimal.rate,
            d.rate / if events == large { both_large } else { both },
            target.map_or("-".into(), |t| format!(">= {t} {}", verdict(x_raw >= t))),
            if bound.is_some() {
                format!("{:.2}", rtt.rtt_p50_ms)
            } else {
                "-".into()
            },
            bound.map_or("-".into(), thousands),
            bound.map_or("-".into(), |b| format!("{:.2}", d.rate / b)),
            d.startup_secs,
            d.rss_mb,
            d.note(events)
        );
        results.push(d);
    }
    let (at_small, at_large) = (results[2], results[4]);
    let ratio = at_large.rate / at_small.rate;
    println!();
    println!(
        "{} / {} backlog drain rate (1,000 aggregates): {ratio:.2} (target >= 0.8: {}); the same ratio for broker and store together without the relay: {:.2} ({} / {} events/s)",
        thousands(large as f64),
        thousands(small as f64),
        verdict(ratio >= 0.8),
        both_large / both,
        thousands(both_large),
        thousands(both)
    );
    println!(
        "relay peak RSS during the {} drain: {:.1} MB (target <= 64 MB: {})",
        thousands(large as f64),
        at_large.rss_mb,
        verdict(at_large.rss_mb <= 64.0)
    );
    println!(
        "(drain ev/s counts from the relay's first message in the queue; \"start s\" is the start-up before it)"
    );
    if results.iter().any(|d| d.timed_out) {
        println!(
            "(a drain that gave up, at --drain-timeout {} s or when a relay exited, reports the events settled by then)",
            a.drain_timeout
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let a = Args::parse();
    if a.matrix {
        matrix(&a).await;
        return;
    }
    let backlog = Backlog {
        events: a.events,
        aggregates: a.aggregates,
        payload: a.payload_bytes,
        analyze: a.analyze,
    };
    let timeout = Duration::from_secs(a.drain_timeout);
    println!(
        "outbox-relay benchmark: {} events over {} aggregates",
        thousands(a.events as f64),
        thousands(a.aggregates as f64)
    );
    describe_setup(&a).await;
    let (broker, minimal, serial, at_aggregates) = if a.skip_broker {
        (
            BrokerRun::SKIPPED,
            BrokerRun::SKIPPED,
            BrokerRun::SKIPPED,
            BrokerRun::SKIPPED,
        )
    } else {
        let broker = raw_broker(
            a.events,
            a.payload_bytes,
            RAW_WINDOW,
            Confirms::Plain,
            Shape::Relay,
        )
        .await;
        let minimal = raw_broker(
            a.events,
            a.payload_bytes,
            RAW_WINDOW,
            Confirms::Plain,
            Shape::Minimal,
        )
        .await;
        let serial = raw_broker(
            a.events.min(2000),
            a.payload_bytes,
            1,
            Confirms::Plain,
            Shape::Relay,
        )
        .await;
        // The round trip with as many confirms outstanding as there are aggregates, for
        // the order bound of the drain, when the aggregates are what binds.
        let at_aggregates = if a.aggregates < RAW_WINDOW && !a.skip_drain {
            let n = rtt_messages(a.aggregates);
            raw_broker(
                n,
                a.payload_bytes,
                a.aggregates,
                Confirms::Timed,
                Shape::Relay,
            )
            .await
        } else {
            BrokerRun::SKIPPED
        };
        (broker, minimal, serial, at_aggregates)
    };
    let store = if a.skip_store {
        f64::NAN
    } else {
        raw_store(backlog, a.batch_size).await
    };
    let both = if a.skip_store || a.skip_broker {
        f64::NAN
    } else {
        raw_combined(backlog, a.batch_size).await
    };
    println!(
        "1. raw broker (lapin, {RAW_WINDOW} outstanding confirms) {:>10} msg/s   (serial confirms: {} msg/s; the relay's message properties)",
        thousands(broker.rate),
        thousands(serial.rate)
    );
    println!(
        "   (only delivery_mode and message_id: {} msg/s)",
        thousands(minimal.rate)
    );
    println!(
        "2. raw store (relay claim + mark SQL, no broker) {:>10} rows/s",
        thousands(store)
    );
    println!(
        "   raw broker and store together (read, publish, mark; no relay) {} events/s",
        thousands(both)
    );
    if !a.skip_drain {
        let d = relay_drain(backlog, a.batch_size, a.replicas, timeout).await;
        let limit = broker.rate.min(store);
        println!(
            "3. relay drain ({} replica(s))                   {:>10} events/s  = {:.2} x min(1, 2) = {}  ({:.2} x raw broker){}",
            a.replicas,
            thousands(d.rate),
            d.rate / limit,
            thousands(limit),
            d.rate / broker.rate,
            d.note(a.events)
        );
        println!(
            "   ({:.2} x the raw broker with minimal properties, {:.2} x broker and store together)",
            d.rate / minimal.rate,
            d.rate / both
        );
        println!(
            "   (from the first message in the queue; the relay's start-up before it took {:.2} s, {} events/s with it)",
            d.startup_secs,
            thousands(d.rate_with_startup())
        );
        if let Some(bound) = order_bound(a.aggregates, &at_aggregates) {
            println!(
                "   order bound: {} aggregates / {:.2} ms confirm round trip at {} outstanding = {} events/s ({:.2} x bound)",
                a.aggregates,
                at_aggregates.rtt_p50_ms,
                a.aggregates,
                thousands(bound),
                d.rate / bound
            );
        }
        println!(
            "6. relay peak RSS during the drain               {:>10.1} MB",
            d.rss_mb
        );
    }
    if !a.skip_latency {
        let (p50, p99, max, n) = latency(a.latency_seconds, a.rate).await;
        println!(
            "4. notify wake-up latency at {} events/s ({n} events): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            a.rate
        );
    }
    if !a.skip_producers {
        let (bare, always, trigger_only, ours) = producers(a.producer_seconds).await;
        println!(
            "5. producer commits/s (4 conns, 1 row/tx): no trigger {bare:.0} | always-NOTIFY trigger {always:.0} ({:.2}x) | relay's trigger, relay busy (no NOTIFY) {trigger_only:.0} ({:.2}x) | relay's trigger + running relay draining them {ours:.0} ({:.2}x)",
            always / bare,
            trigger_only / bare,
            ours / bare
        );
    }
    if a.sqs {
        let raw = raw_sqs(a.sqs_events, a.payload_bytes, a.aggregates).await;
        let sqs_backlog = Backlog {
            events: a.sqs_events,
            ..backlog
        };
        let relay = relay_drain_sqs(sqs_backlog, a.batch_size, timeout).await;
        println!(
            "7. SQS emulator ({} events): raw SendMessageBatch (10/call, {SQS_IN_FLIGHT} in flight) {raw:.0} msg/s | relay drain {:.0} events/s = {:.2} x raw{}",
            a.sqs_events,
            relay.rate,
            relay.rate / raw,
            relay.note(a.sqs_events)
        );
    }
}
