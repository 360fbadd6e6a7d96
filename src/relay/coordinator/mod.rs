//! Replica coordination through Postgres only: aggregates are split into `relay.buckets`
//! hash buckets, and each bucket is owned by exactly one replica through a session-level
//! advisory lock held on a dedicated connection. Every `relay.rebalance_interval` a replica
//! counts the live replicas (their member locks, visible in `pg_locks`), aims for
//! `ceil(buckets / replicas)` buckets, stops claiming extras and unlocks them once its
//! in-flight events of those buckets are settled, and try-locks free ones. A replica that dies
//! loses its session and so its locks; the others pick its buckets up at their next tick.
//!
//! Hand-over without duplicates: the pipeline reads its ownership and registers the claim it
//! is about to run in one step ([`InFlight::begin_claim`]), and the claimed events stay
//! registered until settled; a released bucket is unlocked only when neither a claim over it
//! nor any of its events is in flight.
//!
//! Fencing: ownership is a lease. The pipeline only claims, and a batch only starts its next
//! wave, while the last successful tick is younger than `relay.lease_timeout`. Losing the
//! coordination connection (noticed at once: the connection task ends) or a failed or hung
//! tick revokes the lease immediately, so a replica cut off from Postgres stops publishing
//! before the server can hand its buckets to another replica (the server notices a dead
//! client through TCP keepalives and `tcp_user_timeout`, set short on this connection).
//!
//! Submodules: `ownership` is what the pipeline may claim (buckets and lease), `in_flight` the
//! hand-over bookkeeping shared with the pipeline, `rebalance` the lock session and one tick.
//! This file runs the coordinator: the connection's life (open, tick, reconnect with backoff)
//! and what it reports.

mod in_flight;
mod ownership;
mod rebalance;

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::rebalance::{Session, finish_releases, open, tick};
use crate::backoff::ReconnectBackoff;
use crate::config::TableName;
use crate::ops::{health::Health, metrics::Metrics};
use crate::store::connect::{ConnectError, Connector};

pub use in_flight::{Claim, InFlight};
pub use ownership::Ownership;

/// How often buckets waiting to be released are checked between ticks.
const RELEASE_POLL: Duration = Duration::from_millis(20);

/// Settings for [`run`].
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Number of buckets (every replica must use the same value).
    pub buckets: i32,
    /// Tick period.
    pub rebalance_interval: Duration,
    /// Ownership is valid this long after a successful tick; a tick that takes longer is
    /// abandoned and the connection reopened.
    pub lease_timeout: Duration,
    /// Longest wait for in-flight events before a released bucket is unlocked anyway.
    pub release_timeout: Duration,
    /// Stand down (release every bucket, stop counting as a replica) once the broker has been
    /// unusable this long; `None`: never.
    pub broker_release_after: Option<Duration>,
}

/// Why the coordination connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A statement failed.
    #[error("coordination query failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The server did not answer within `relay.lease_timeout`.
    #[error("no answer from Postgres within relay.lease_timeout")]
    Timeout,
    /// The connection closed (server restart, `pg_terminate_backend`, network).
    #[error("the coordination connection closed")]
    Closed,
}

impl CoordinationError {
    /// Failed to connect at all (the health state reports that, with its cause).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            CoordinationError::Connect(_) | CoordinationError::Timeout
        )
    }
}

/// Where the coordinator reports: bucket gauges, and the database state behind `/readyz`
/// (with its buckets revoked the pipeline claims nothing, so only the coordinator notices a
/// lost database then).
pub struct Reports {
    /// Metrics (owned buckets, relays seen).
    pub metrics: Arc<Metrics>,
    /// Health state.
    pub health: Arc<Health>,
}

/// Keeps `ownership` up to date until `shutdown`.
pub async fn run(
    connector: Connector,
    table: TableName,
    config: CoordinatorConfig,
    ownership: watch::Sender<Ownership>,
    in_flight: InFlight,
    reports: Reports,
    shutdown: CancellationToken,
) {
    let Reports { metrics, health } = reports;
    let mut backoff = ReconnectBackoff::new();
    // Warn on the first failure after a success; repeats are debug.
    let mut failing = false;
    // The last session, when it was given up on: ended by the next one.
    let mut zombie = None;
    while !shutdown.is_cancelled() {
        // Wait for the connection gate's turn first: the lease timeout bounds the attempt,
        // not the backoff of a database that refuses connections.
        tokio::select! {
            _ = connector.gate().turn() => {}
            _ = shutdown.cancelled() => return,
        }
        let opened = tokio::select! {
            opened = tokio::time::timeout(config.lease_timeout, open(&connector, &table, &config, zombie)) => {
                opened.unwrap_or(Err(CoordinationError::Timeout))
            }
            _ = shutdown.cancelled() => return,
        };
        match opened {
            Ok(mut session) => {
                backoff.reset();
                failing = false;
                health.set_database_up(true, "");
                let error = serve(
                    &mut session,
                    &config,
                    &ownership,
                    &in_flight,
                    (&metrics, &health),
                    &shutdown,
                )
                .await;
                revoke(&ownership, &metrics, config.buckets);
                let Some(error) = error else {
                    return; // shutdown
                };
                // The server may not know this session is gone (a frozen path): the next one
                // ends it. One that closed is gone already; ending it again is a no-op.
                zombie = Some(session.id());
                health.set_database_up(false, &error.to_string());
                tracing::warn!(
                    %error,
                    released = session.owned.len() + session.releasing.len(),
                    "lost the coordination connection; stopped claiming, reconnecting"
                );
            }
            Err(error) => {
                revoke(&ownership, &metrics, config.buckets);
                // A timeout spent queueing at the connection gate is not the cause: the
                // gate's last failure is.
                let cause = match (&error, connector.gate().last_error()) {
                    (CoordinationError::Timeout, Some(cause)) => {
                        format!("cannot connect to Postgres: {cause}")
                    }
                    _ => error.to_string(),
                };
                health.set_database_up(false, &cause);
                if failing {
                    tracing::debug!(%error, "cannot open the coordination connection; retrying");
                } else {
                    failing = true;
                    // Warn only about what the health state does not already say.
                    if error.is_connect() {
                        tracing::debug!(%error, "cannot open the coordination connection; retrying");
                    } else {
                        tracing::warn!(%error, "cannot open the coordination connection; retrying");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    revoke(&ownership, &metrics, config.buckets);
}

/// No buckets, no lease: the pipeline stops claiming and batches stop publishing.
fn revoke(ownership: &watch::Sender<Ownership>, metrics: &Metrics, count: i32) {
    ownership.send_replace(Ownership::none(count));
    metrics.owned_buckets.set(0);
}

/// Ticks on an open session until it fails (`Some(error)`) or shutdown (`None`).
async fn serve(
    session: &mut Session,
    config: &CoordinatorConfig,
    ownership: &watch::Sender<Ownership>,
    in_flight: &InFlight,
    (metrics, health): (&Metrics, &Health),
    shutdown: &CancellationToken,
) -> Option<CoordinationError> {
    let mut ticker = tokio::time::interval(config.rebalance_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            _ = ticker.tick() => {
                let stand_down = config
                    .broker_release_after
                    .zip(health.broker_down_for())
                    .is_some_and(|(after, down)| down >= after);
                tokio::time::timeout(
                    config.lease_timeout,
                    tick(session, config, ownership, in_flight, stand_down),
                )
                    .await
                    .unwrap_or(Err(CoordinationError::Timeout))
            }
            message = session.messages.recv() => match message {
                // Notices (e.g. from unlocking) are of no interest.
                Some(_) => Ok(()),
                None => Err(CoordinationError::Closed),
            },
            _ = tokio::time::sleep(RELEASE_POLL), if !session.releasing.is_empty() => {
                tokio::time::timeout(config.lease_timeout, finish_releases(session, in_flight))
                    .await
                    .unwrap_or(Err(CoordinationError::Timeout))
            }
            _ = shutdown.cancelled() => return None,
        };
        metrics.owned_buckets.set(session.owned.len() as i64);
        metrics.relays.set(session.members_seen);
        if let Err(error) = result {
            return Some(error);
        }
    }
}
