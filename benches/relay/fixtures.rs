//! The fixtures every part sets up and tears down: server URLs, fresh migrated databases,
//! prefilled backlogs, the relay's store on them, and fresh RabbitMQ exchanges and queues.

use std::time::{Duration, SystemTime};

use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use outbox_relay::{
    config::{DatabaseConfig, TableName},
    event::OutboxEvent,
    store::{DispatchMode, Store, connect::Connector, migrate},
};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::report::thousands;

/// The Postgres server (`OUTBOX_TEST_PG`, as in the tests), without a database.
pub fn pg_server() -> String {
    std::env::var("OUTBOX_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The RabbitMQ URL (`OUTBOX_TEST_AMQP`, as in the tests).
pub fn amqp() -> String {
    std::env::var("OUTBOX_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The table the relay drains with its default config, which the benchmark runs it with.
pub fn table() -> TableName {
    DatabaseConfig::default().table
}

/// A plain (no TLS) connection. Not the library's connector on purpose: it would negotiate
/// TLS with a server that offers it (`sslmode=prefer`), and the producers' commits of parts
/// 4 and 5 are measured over these connections as they always were.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A fresh, migrated database; returns its name and URL.
pub async fn fresh_db() -> (String, String) {
    let name = format!("outbox_bench_{}", Uuid::new_v4().simple());
    connect(&format!("{}/postgres", pg_server()))
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{}/{name}", pg_server());
    let mut client = connect(&url).await;
    migrate::migrate(&mut client, &table()).await.unwrap();
    (name, url)
}

/// A fresh, migrated database holding backlog `b`; returns its name and URL.
pub async fn prefilled_db(b: Backlog) -> (String, String) {
    let (name, url) = fresh_db().await;
    prefill(&url, b).await;
    (name, url)
}

/// Drops a database made by [`fresh_db`], connections and all.
pub async fn drop_db(name: &str) {
    let _ = connect(&format!("{}/postgres", pg_server()))
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

/// What the table's statistics say when the backlog arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableShape {
    /// Never analyzed: the backlog is measured as loaded, no statistics (a backlog that
    /// arrives between autovacuum runs).
    Unanalyzed,
    /// VACUUM ANALYZE after the backlog's load: statistics that know the backlog (flattering).
    Analyzed,
    /// Analyzed while quiet: `--quiet-rows` dispatched rows, VACUUM ANALYZE, then the backlog,
    /// not analyzed after. What autovacuum leaves in production before an outage's backlog
    /// arrives: statistics that say the pending partial indexes are empty.
    #[value(name = "quiet")]
    QuietAnalyzed,
}

impl TableShape {
    /// The shape's name in tables ("quiet-analyzed").
    pub fn label(self) -> &'static str {
        match self {
            Self::Unanalyzed => "unanalyzed",
            Self::Analyzed => "analyzed",
            Self::QuietAnalyzed => "quiet-analyzed",
        }
    }

    /// The shape in a sentence, for the setup line.
    pub fn describe(self, quiet_rows: usize) -> String {
        match self {
            Self::Unanalyzed => "measured as loaded (no ANALYZE, no VACUUM)".into(),
            Self::Analyzed => "VACUUM ANALYZEd after the prefill".into(),
            Self::QuietAnalyzed => format!(
                "analyzed while quiet ({} dispatched rows, VACUUM ANALYZE, then the backlog; autovacuum off on the table)",
                thousands(quiet_rows as f64)
            ),
        }
    }
}

/// A backlog to prefill: `events` rows of ~`payload` bytes spread over `aggregates`
/// aggregate_ids round-robin in `seq` order, written by one INSERT ... SELECT (one
/// transaction, one call of the statement trigger).
#[derive(Clone, Copy, Debug)]
pub struct Backlog {
    pub events: usize,
    pub aggregates: usize,
    pub payload: usize,
    /// The table's statistics when the relay meets the backlog.
    pub shape: TableShape,
    /// Dispatched rows written and analyzed before the backlog (`TableShape::QuietAnalyzed`
    /// only).
    pub quiet_rows: usize,
}

/// Rows per INSERT ... SELECT of [`retain`]: bounds the memory and WAL of one statement.
const RETAIN_CHUNK: usize = 500_000;

/// Writes `rows` rows shaped like a backlog's (`payload` bytes, aggregate i mod
/// `aggregates`), `pending` or already `dispatched` (dispatched_at = now()), in one
/// INSERT ... SELECT; `first` numbers them.
async fn insert_rows(
    client: &Client,
    first: usize,
    rows: usize,
    (aggregates, payload): (usize, usize),
    dispatched: bool,
) {
    let pad = "x".repeat(payload.saturating_sub(40));
    let (first, last) = (first as i64, (first + rows) as i64 - 1);
    client
        .execute(
            "INSERT INTO outbox_events \
               (aggregate_type, aggregate_id, event_type, payload, status, dispatched_at) \
             SELECT 'order', (i % $3::int8)::text, 'created', \
               jsonb_build_object('i', i, 'pad', $4::text), \
               CASE WHEN $5::bool THEN 'dispatched' ELSE 'pending' END, \
               CASE WHEN $5::bool THEN now() END \
             FROM generate_series($1::int8, $2::int8) i",
            &[&first, &last, &(aggregates as i64), &pad, &dispatched],
        )
        .await
        .unwrap();
}

/// Retained history: `rows` dispatched rows (dispatched_at = now(), so the default
/// retention purge deletes none of them for a week), written in chunks of [`RETAIN_CHUNK`],
/// then VACUUM ANALYZE: the table as autovacuum leaves it while nothing is pending.
///
/// Autovacuum is turned off on the table first, so the statistics stay "quiet" until the
/// measurement ends: in production autovacuum would analyze again once enough rows changed,
/// and the point is to measure what the relay does until it does.
pub async fn retain(client: &Client, rows: usize, aggregates: usize, payload: usize) {
    client
        .batch_execute("ALTER TABLE outbox_events SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    let mut written = 0;
    while written < rows {
        let chunk = RETAIN_CHUNK.min(rows - written);
        insert_rows(client, written + 1, chunk, (aggregates, payload), true).await;
        written += chunk;
    }
    client
        .batch_execute("VACUUM ANALYZE outbox_events")
        .await
        .unwrap();
}

/// Writes backlog `b` into the migrated database at `url`, in its table shape.
pub async fn prefill(url: &str, b: Backlog) {
    let client = connect(url).await;
    if b.shape == TableShape::QuietAnalyzed {
        retain(&client, b.quiet_rows, b.aggregates, b.payload).await;
    }
    insert_rows(&client, 1, b.events, (b.aggregates, b.payload), false).await;
    if b.shape == TableShape::Analyzed {
        client
            .batch_execute("VACUUM ANALYZE outbox_events")
            .await
            .unwrap();
    }
    checkpoint(&client).await;
}

/// Writes the load's dirty pages out now rather than in a checkpoint during the
/// measurement (needs superuser or pg_checkpoint; skipped otherwise). Neither statistics
/// nor the visibility map change.
pub async fn checkpoint(client: &Client) {
    let _ = client.batch_execute("CHECKPOINT").await;
}

/// A connection with a fresh durable exchange + durable queue bound with `#`; returns the
/// connection, the exchange and the queue.
pub async fn fresh_broker() -> (Connection, String, String) {
    let conn = Connection::connect(&amqp(), ConnectionProperties::default())
        .await
        .unwrap();
    let (exchange, queue) = broker_setup(&conn).await;
    (conn, exchange, queue)
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

/// Deletes what [`fresh_broker`] declared.
pub async fn broker_cleanup(conn: &Connection, exchange: &str, queue: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch.queue_delete(queue.into(), Default::default()).await;
    let _ = ch
        .exchange_delete(exchange.into(), Default::default())
        .await;
}

/// A connection with a fresh exchange and queue (bound with `#`) and a confirm-mode channel.
pub async fn confirm_channel() -> (Connection, String, String, lapin::Channel) {
    let (conn, exchange, queue) = fresh_broker().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, exchange, queue, ch)
}

/// A fresh database holding backlog `b`, and the relay's store on it (pool of 4).
pub async fn prefilled_store(b: Backlog) -> (String, Store) {
    let (name, url) = prefilled_db(b).await;
    let connector = Connector::new(&url, None, "bench", Duration::from_secs(5)).unwrap();
    let store = Store::new(connector.pool(4).unwrap(), table(), DispatchMode::Mark);
    (name, store)
}

/// Event `i` of a raw run as the relay would read it from the table: aggregate `i` mod
/// `aggregates`, type `order` / `created`, `payload` as its body.
pub fn sample_event(i: usize, aggregates: usize, payload: String) -> OutboxEvent {
    OutboxEvent {
        id: Uuid::new_v4(),
        seq: i as i64,
        aggregate_type: "order".into(),
        aggregate_id: (i % aggregates).to_string(),
        event_type: "created".into(),
        payload,
        headers: vec![],
        created_at: SystemTime::now(),
        attempts: 0,
        bucket: 0,
    }
}
