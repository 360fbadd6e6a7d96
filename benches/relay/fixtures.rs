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

/// A backlog to prefill: `events` rows of ~`payload` bytes spread over `aggregates`
/// aggregate_ids round-robin in `seq` order, written by one INSERT ... SELECT (one
/// transaction, one call of the statement trigger).
#[derive(Clone, Copy, Debug)]
pub struct Backlog {
    pub events: usize,
    pub aggregates: usize,
    pub payload: usize,
    /// VACUUM ANALYZE after the load; otherwise the table has no statistics, as loaded.
    pub analyze: bool,
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
