//! The relay: wires the store, the broker, the wake-up listener, the pipeline and the
//! background tasks (gauges, retention) together and runs them until the injected shutdown
//! token is cancelled.

pub mod batch;
pub mod coordinator;
pub mod pipeline;
pub mod policy;
pub mod scheduler;
pub mod wakeup;

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    broker::{PublishError, Publisher},
    config::{Config, ConfigError, RelayMode},
    ops::{health::Health, metrics::Metrics, snapshot::Snapshot},
    store::{
        DispatchMode, Store, StoreError,
        connect::{ConnectError, Connector},
        gate::AttemptCounters,
    },
};
use batch::BatchContext;
use pipeline::Pipeline;
use policy::RetryPolicy;
use wakeup::Wakeup;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Bad connection settings.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The outbox table is missing or unreadable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration breaks a rule (a `Config` built in code, not loaded).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// How long after the server's `statement_timeout` the relay stops waiting for an answer: a
/// statement the server cancelled answers with an error within this; one that does not answer
/// at all is on a connection that stopped answering.
pub const STATEMENT_GRACE: Duration = Duration::from_secs(2);

/// A configured relay, ready to run.
pub struct Relay<P: Publisher> {
    config: Config,
    connector: Connector,
    store: Store,
    publisher: Arc<P>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    snapshot: Arc<Snapshot>,
}

impl<P: Publisher> Relay<P> {
    /// Builds a relay from `config` publishing through `publisher` (no I/O yet).
    pub fn new(config: &Config, publisher: P) -> Result<Self, RelayError> {
        config.validate()?;
        let table = config.database.table.clone();
        let connector = Connector::from_config(&config.database, "outbox-relay")?
            .with_statement_timeout(config.database.statement_timeout);
        let pool = connector.pool(config.database.pool_size)?;
        let dispatch = if config.retention.dispatched.is_zero() {
            DispatchMode::Delete
        } else {
            DispatchMode::Mark
        };
        let gate = connector.gate().clone();
        let metrics = Arc::new(Metrics::new());
        metrics.export_known_labels(&PublishError::REASONS, &publisher.destinations());
        connector.gate().count_into(AttemptCounters {
            ok: metrics.attempts("database", true),
            error: metrics.attempts("database", false),
        });
        let health = Arc::new(Health::new(metrics.clone(), config.metrics.wedged_after));
        let snapshot = Arc::new(Snapshot::new(
            config.metrics.status_page,
            config.metrics.refresh_interval,
            config.relay.buckets,
        ));
        Ok(Self {
            snapshot,
            config: config.clone(),
            connector,
            store: Store::new(pool, table, dispatch)
                .with_gate(gate)
                .with_deadline(config.database.statement_timeout + STATEMENT_GRACE),
            publisher: Arc::new(publisher),
            metrics,
            health,
        })
    }

    /// The metrics registry (serve it with [`crate::ops::server::serve`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The health state.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The status snapshot (serve it with [`crate::ops::server::serve`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight batches and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let wakeup = Wakeup::new();
        let background = CancellationToken::new();
        let mut helpers = tokio::task::JoinSet::new();
        if self.config.relay.mode == RelayMode::Notify {
            helpers.spawn(wakeup::listen(
                self.connector.clone(),
                self.store.table().clone(),
                wakeup.clone(),
                background.clone(),
            ));
        }
        helpers.spawn(crate::ops::gauges::refresh_loop(
            self.store.pool().clone(),
            self.store.table().clone(),
            self.metrics.clone(),
            self.health.clone(),
            self.snapshot.clone(),
            self.store.deadline(),
            background.clone(),
        ));
        // Also with `retention.dispatched = 0s` (delete on dispatch): then it removes rows
        // left dispatched from before, and finds nothing afterwards.
        helpers.spawn(crate::store::retention::purge_loop(
            self.store.pool().clone(),
            self.store.table().clone(),
            crate::store::retention::RetentionSchedule {
                older_than: self.config.retention.dispatched,
                batch: i64::try_from(self.config.retention.batch_size).unwrap_or(i64::MAX),
                interval: self.config.retention.interval,
                deleted: self.metrics.retention_deleted.clone(),
                deadline: self.store.deadline(),
            },
            background.clone(),
        ));
        let bucket_count = i32::try_from(self.config.relay.buckets).unwrap_or(64);
        let (ownership_tx, ownership) =
            tokio::sync::watch::channel(coordinator::Ownership::none(bucket_count));
        let in_flight = coordinator::InFlight::default();
        helpers.spawn(coordinator::run(
            self.connector.clone(),
            self.store.table().clone(),
            coordinator::CoordinatorConfig {
                buckets: bucket_count,
                rebalance_interval: self.config.relay.rebalance_interval,
                lease_timeout: self.config.relay.lease_timeout,
                release_timeout: self.config.relay.shutdown_timeout,
                broker_release_after: Some(self.config.relay.broker_release_after)
                    .filter(|after| !after.is_zero()),
            },
            ownership_tx,
            in_flight.clone(),
            coordinator::Reports {
                metrics: self.metrics.clone(),
                health: self.health.clone(),
            },
            background.clone(),
        ));
        let ctx = Arc::new(BatchContext {
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            policy: RetryPolicy::new(&self.config.retry),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            shutdown: shutdown.clone(),
            abandon: CancellationToken::new(),
            lease: ownership.clone(),
        });
        tracing::info!(
            table = %self.store.table(),
            mode = %self.config.relay.mode,
            batch_size = self.config.relay.batch_size,
            "relay started"
        );
        Pipeline::new(ctx, self.config.relay.clone(), wakeup, ownership, in_flight)
            .run(shutdown)
            .await;
        // Bounded, so the process exits within relay.shutdown_timeout even when a server
        // stopped answering.
        let step = pipeline::ShutdownBudget::new(self.config.relay.shutdown_timeout).step;
        background.cancel();
        let joined =
            tokio::time::timeout(step, async { while helpers.join_next().await.is_some() {} });
        if joined.await.is_err() {
            tracing::warn!(
                tasks = helpers.len(),
                "background tasks did not stop; aborted"
            );
            helpers.abort_all();
        }
        if tokio::time::timeout(step, self.publisher.close())
            .await
            .is_err()
        {
            tracing::warn!("broker connection did not close in time; dropped");
        }
        tracing::info!("relay stopped");
        Ok(())
    }
}
