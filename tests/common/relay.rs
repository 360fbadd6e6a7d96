//! A relay running in-process with an injected shutdown token: the tests' configuration
//! (fast intervals, the test's database and exchange), starting it with the RabbitMQ
//! publisher or any other, and serving its ops port.

use std::{sync::Arc, time::Duration};

use outbox_relay::{
    broker::{Publisher, rabbitmq::RabbitMqPublisher},
    config::{Config, RelayMode},
    ops::{health::Health, metrics::Metrics, snapshot::Snapshot},
    relay::Relay,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{PATIENCE, TestBroker, TestDb, amqp_url, eventually, http::http_get};

/// The settings every test relay shares, whatever its broker: the given database, notify
/// mode, fast intervals and backoffs, an ephemeral ops port.
pub fn base_config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.database.url = db.url.parse().expect("a test database URL");
    config.database.pool_size = 4;
    config.relay.mode = RelayMode::Notify;
    config.relay.poll_interval = Duration::from_millis(200);
    config.relay.batch_size = 100;
    config.retry.initial_backoff = Duration::from_millis(50);
    config.retry.max_backoff = Duration::from_millis(200);
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config.relay.shutdown_timeout = Duration::from_secs(10);
    config
}

/// A relay configuration for tests: [`base_config`] publishing to the test's exchange.
pub fn relay_config(db: &TestDb, broker: &TestBroker) -> Config {
    let mut config = base_config(db);
    // Replays and late commits are found by the rescan: keep tests quick.
    config.relay.rescan_interval = Duration::from_millis(500);
    config.broker.rabbitmq.url = amqp_url();
    config.broker.rabbitmq.exchange = broker.exchange.clone();
    config
}

/// [`relay_config`] for a relay only a NOTIFY can wake: its fallback poll and its
/// coordination ticks are an hour away (the lease twice that). Tests set the `linger` they
/// need.
pub fn notify_only_config(db: &TestDb, broker: &TestBroker) -> Config {
    let mut config = relay_config(db, broker);
    config.relay.poll_interval = Duration::from_secs(3600);
    config.relay.rebalance_interval = Duration::from_secs(3600);
    config.relay.lease_timeout = Duration::from_secs(7200);
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
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    addr
}
