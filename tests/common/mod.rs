//! Test harness shared by the integration tests: a fresh database per test (uuid name,
//! migrated), a fresh RabbitMQ exchange + queue per test, a relay running in-process with an
//! injected shutdown token, and helpers that await conditions instead of sleeping.
//!
//! Services: Postgres at `OUTBOX_TEST_PG` (default `postgres://postgres@127.0.0.1:5432`),
//! RabbitMQ at `OUTBOX_TEST_AMQP` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used)]

pub mod faults;
pub mod prometheus;
pub mod servers;
pub mod sqs;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use outbox_relay::{
    broker::{Publisher, rabbitmq::RabbitMqPublisher},
    config::{Config, RelayMode, TableName},
    ops::{health::Health, metrics::Metrics, snapshot::Snapshot},
    relay::Relay,
    store::{connect::Connector, migrate::migrate},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Postgres server URL without a database.
pub fn pg_server() -> String {
    std::env::var("OUTBOX_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// RabbitMQ URL.
pub fn amqp_url() -> String {
    std::env::var("OUTBOX_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Upper bound for any awaited condition: generous, only hit when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "outbox_relay=info,lapin=error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A database created for one test and dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub table: TableName,
}

impl TestDb {
    /// Creates an empty database (no schema).
    pub async fn empty() -> Self {
        init_tracing();
        let name = format!("outbox_test_{}", Uuid::new_v4().simple());
        let admin = connect(&format!("{}/postgres", pg_server())).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self {
            url: format!("{}/{name}", pg_server()),
            name,
            table: TableName::parse("outbox_events").unwrap(),
        }
    }

    /// Creates a database and applies the schema for `outbox_events`.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        let mut client = db.client().await;
        migrate(&mut client, &db.table).await.unwrap();
        db
    }

    /// A plain client on this database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Inserts one event in its own transaction; returns its id.
    pub async fn insert(&self, client: &Client, aggregate_id: &str, event_type: &str) -> Uuid {
        insert_event(
            client,
            "order",
            aggregate_id,
            event_type,
            serde_json::json!({"n": event_type}),
        )
        .await
    }

    /// Every event's `seq`, by event ID (text).
    pub async fn seqs(&self, client: &Client) -> std::collections::HashMap<String, i64> {
        client
            .query("SELECT id::text, seq FROM outbox_events", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// `SELECT count(*) ... WHERE status = $1`.
    pub async fn count(&self, client: &Client, status: &str) -> i64 {
        count_status(client, status).await
    }
}

/// Rows of `outbox_events` with this status.
pub async fn count_status(client: &Client, status: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM outbox_events WHERE status = $1",
            &[&status],
        )
        .await
        .unwrap()
        .get(0)
}

/// A relay has announced that it sleeps (and waits for a NOTIFY): sleepers > wakers.
pub async fn relay_sleeps(client: &Client) -> bool {
    client
        .query_one(
            "SELECT pg_sequence_last_value('outbox_events_sleepers') \
                  > pg_sequence_last_value('outbox_events_wakers')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_execute_blocking(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs `sql` on the server's `postgres` database, best effort, from synchronous code (a
/// `Drop`, which cannot be async): on a separate thread and runtime.
pub fn admin_execute_blocking(sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&format!("{}/postgres", pg_server()), NoTls).await
            {
                tokio::spawn(conn);
                let _ = client.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

/// Connects without TLS and drives the connection in the background.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Inserts an event (autocommit) into `outbox_events`.
pub async fn insert_event(
    client: &Client,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: serde_json::Value,
) -> Uuid {
    client
        .query_one(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&aggregate_type, &aggregate_id, &event_type, &payload],
        )
        .await
        .unwrap()
        .get(0)
}

/// A per-test exchange with one queue bound to `binding` ("#" for everything).
pub struct TestBroker {
    pub exchange: String,
    pub queue: String,
    pub connection: Connection,
    pub channel: Channel,
}

impl TestBroker {
    /// Declares the exchange (durable topic, as the relay does) and no queue yet.
    pub async fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self::attach(
            &amqp_url(),
            &format!("outbox-test-{id}"),
            &format!("outbox-test-q-{id}"),
            false,
        )
        .await
    }

    /// Connects to the broker at `url` and declares `exchange` and `queue` (a `durable` queue
    /// survives a broker restart); attaching again after a restart finds them.
    pub async fn attach(url: &str, exchange: &str, queue: &str, durable: bool) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let (exchange, queue) = (exchange.to_owned(), queue.to_owned());
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    auto_delete: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: false,
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            exchange,
            queue,
            connection,
            channel,
        }
    }

    /// A broker whose queue is bound with `#` (receives everything).
    pub async fn bound() -> Self {
        let broker = Self::new().await;
        broker.bind("#").await;
        broker
    }

    /// Binds the test queue with `routing_key`.
    pub async fn bind(&self, routing_key: &str) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Starts consuming; messages arrive on the returned channel (acked on receipt).
    pub async fn consume(&self) -> mpsc::UnboundedReceiver<Received> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("c-{}", Uuid::new_v4()).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _keep = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                let props = &delivery.properties;
                let headers = props
                    .headers()
                    .as_ref()
                    .map(|h| {
                        h.inner()
                            .iter()
                            .map(|(k, v)| {
                                let v = match v {
                                    lapin::types::AMQPValue::LongString(s) => s.to_string(),
                                    other => format!("{other:?}"),
                                };
                                (k.to_string(), v)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let seq = props.headers().as_ref().and_then(|h| {
                    match h.inner().get(&lapin::types::ShortString::from("x-seq")) {
                        Some(lapin::types::AMQPValue::LongLongInt(n)) => Some(*n),
                        _ => None,
                    }
                });
                let msg = Received {
                    seq,
                    message_id: props
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    routing_key: delivery.routing_key.to_string(),
                    body: String::from_utf8_lossy(&delivery.data).into_owned(),
                    content_type: props.content_type().as_ref().map(|s| s.to_string()),
                    kind: props.kind().as_ref().map(|s| s.to_string()),
                    delivery_mode: *props.delivery_mode(),
                    timestamp: *props.timestamp(),
                    headers,
                    received_at: Instant::now(),
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// The test queue's ready messages and consumers (a passive declare). Unacked messages
    /// are not counted until their consumer's channel closed.
    pub async fn queue_state(&self) -> (u32, u32) {
        let queue = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (queue.message_count(), queue.consumer_count())
    }

    /// Deletes the queue and exchange.
    pub async fn cleanup(&self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), Default::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }
}

/// A consumed message.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    /// The `x-seq` header, when it is a long-long integer (the contract's type).
    pub seq: Option<i64>,
    pub routing_key: String,
    pub body: String,
    pub content_type: Option<String>,
    pub kind: Option<String>,
    pub delivery_mode: Option<u8>,
    pub timestamp: Option<u64>,
    pub headers: Vec<(String, String)>,
    pub received_at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Receives exactly `n` messages (fails after [`PATIENCE`]).
pub async fn receive_n(rx: &mut mpsc::UnboundedReceiver<Received>, n: usize) -> Vec<Received> {
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + PATIENCE;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => panic!("consumer closed after {} of {n} messages", out.len()),
            Err(_) => panic!("timed out after {} of {n} messages", out.len()),
        }
    }
    out
}

/// A relay configuration for tests: fast intervals, the given database and exchange.
pub fn relay_config(db: &TestDb, broker: &TestBroker) -> Config {
    let mut config = Config::default();
    config.database.url = db.url.parse().expect("a test database URL");
    config.database.pool_size = 4;
    config.relay.mode = RelayMode::Notify;
    config.relay.poll_interval = Duration::from_millis(200);
    config.relay.batch_size = 100;
    // Replays and late commits are found by the rescan: keep tests quick.
    config.relay.rescan_interval = Duration::from_millis(500);
    config.retry.initial_backoff = Duration::from_millis(50);
    config.retry.max_backoff = Duration::from_millis(200);
    config.broker.rabbitmq.url = amqp_url();
    config.broker.rabbitmq.exchange = broker.exchange.clone();
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config.relay.shutdown_timeout = Duration::from_secs(10);
    config
}

/// A relay running in-process.
pub struct RunningRelay {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub snapshot: Arc<Snapshot>,
}

impl RunningRelay {
    /// Cancels and awaits the relay.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("relay did not stop")
            .unwrap();
    }
}

/// Starts a relay with the RabbitMQ publisher from `config`.
pub fn start_relay(config: &Config) -> RunningRelay {
    let publisher =
        RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout).unwrap();
    start_relay_with(config, publisher)
}

/// Starts a relay with any publisher (e.g. a fault-injecting wrapper).
pub fn start_relay_with<P: Publisher>(config: &Config, publisher: P) -> RunningRelay {
    let relay = Relay::new(config, publisher).unwrap();
    let metrics = relay.metrics();
    let health = relay.health();
    let snapshot = relay.snapshot();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        relay.run(token).await.unwrap();
    });
    RunningRelay {
        shutdown,
        handle,
        metrics,
        health,
        snapshot,
    }
}

/// Serves the relay's `/metrics`, `/healthz`, `/readyz` on 127.0.0.1:<random> until `stop`.
pub async fn serve_ops(relay: &RunningRelay, stop: &CancellationToken) -> std::net::SocketAddr {
    outbox_relay::ops::server::serve(
        "127.0.0.1:0".parse().unwrap(),
        relay.health.clone(),
        relay.metrics.clone(),
        relay.snapshot.clone(),
        stop.clone(),
    )
    .await
    .unwrap()
    .0
}

/// [`serve_ops`], then awaits `/readyz` answering 200 (database and broker connected).
pub async fn serve_ready(relay: &RunningRelay, stop: &CancellationToken) -> std::net::SocketAddr {
    let addr = serve_ops(relay, stop).await;
    eventually("ready", || async {
        faults::http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    addr
}

/// Awaits `condition` (polled every 20 ms, up to [`PATIENCE`]).
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An example's binary next to the outbox-relay binary of this build
/// (`target/<profile>/examples/<name>`). nextest does not build examples: `scripts/test.sh`
/// (and `scripts/bench-inbox.sh`, for release) build the ones tests and benchmarks run.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let relay = std::path::PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay"));
    let path = relay.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo build [--release] --example {name}",
        path.display()
    );
    path
}

/// A connector for the given URL (for tests that need the library's TLS-aware connect).
pub fn connector(url: &str) -> Connector {
    Connector::new(url, None, "outbox-relay-test", Duration::from_secs(5)).unwrap()
}
