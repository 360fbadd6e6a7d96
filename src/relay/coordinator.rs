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

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc::UnboundedReceiver, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::backoff::ReconnectBackoff;
use crate::config::TableName;
use crate::ops::{health::Health, metrics::Metrics};
use crate::store::{
    connect::{ConnectError, Connector},
    coordination::LockSession,
};

/// Advisory-lock class ids (high 32 bits of the key; the low 32 bits are the table's oid).
const NS_MEMBER: i64 = 0x4F52_0000;
const NS_BUCKET: i64 = 0x4F53_0000;
const NS_COUNT: i64 = 0x4F54_0000;
/// Member slots tried when registering.
const MAX_MEMBERS: i64 = 1024;
/// How often buckets waiting to be released are checked between ticks.
const RELEASE_POLL: Duration = Duration::from_millis(20);

/// What this replica may claim right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Owned buckets, sorted.
    pub buckets: Vec<i32>,
    /// Total number of buckets.
    pub count: i32,
    /// The lease: claims and new publish waves are allowed until then.
    pub valid_until: Instant,
}

impl Ownership {
    /// Nothing owned and no lease (before the first tick, or after losing the coordination
    /// connection).
    pub fn none(count: i32) -> Self {
        Self {
            buckets: Vec::new(),
            count,
            valid_until: Instant::now(),
        }
    }

    /// The lease is valid: batches already claimed may go on publishing.
    pub fn leased(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Claims are allowed now.
    pub fn usable(&self) -> bool {
        !self.buckets.is_empty() && self.leased()
    }
}

/// What the pipeline has in flight, per bucket: read by the coordinator before it unlocks a
/// released bucket.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<InFlightState>>);

#[derive(Debug, Default)]
struct InFlightState {
    /// Claimed, not yet settled events per bucket.
    events: HashMap<i32, usize>,
    /// The buckets of the claim query running now (empty when none).
    claiming: Vec<i32>,
}

impl InFlight {
    fn state(&self) -> MutexGuard<'_, InFlightState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the current ownership and, in the same step, records a claim over its buckets
    /// as running. The coordinator publishes a new ownership *before* it checks
    /// [`InFlight::busy`], so it either sees this claim or the claim sees the new ownership.
    /// Finish the claim with [`Claim::claimed`] (dropping the guard records nothing claimed).
    pub fn begin_claim(&self, ownership: &mut watch::Receiver<Ownership>) -> (Ownership, Claim) {
        let mut state = self.state();
        let current = ownership.borrow_and_update().clone();
        state.claiming = current.buckets.clone();
        (current, Claim(Some(self.clone())))
    }

    /// Records events of `buckets` (one entry per event) as settled.
    pub fn settled(&self, buckets: &[i32]) {
        let mut state = self.state();
        for b in buckets {
            if let Some(n) = state.events.get_mut(b) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.events.remove(b);
                }
            }
        }
    }

    /// Whether a running claim covers `bucket` or an event of it is in flight.
    pub fn busy(&self, bucket: i32) -> bool {
        let state = self.state();
        state.claiming.contains(&bucket) || state.events.contains_key(&bucket)
    }

    /// Events in flight (all buckets).
    pub fn events(&self) -> usize {
        self.state().events.values().sum()
    }
}

/// A claim in progress (see [`InFlight::begin_claim`]).
#[derive(Debug)]
pub struct Claim(Option<InFlight>);

impl Claim {
    /// The claim returned events of these buckets (one entry per event): they are in flight
    /// until [`InFlight::settled`].
    pub fn claimed(mut self, buckets: impl IntoIterator<Item = i32>) {
        if let Some(in_flight) = self.0.take() {
            let mut state = in_flight.state();
            for b in buckets {
                *state.events.entry(b).or_insert(0) += 1;
            }
            state.claiming.clear();
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(in_flight) = self.0.take() {
            in_flight.state().claiming.clear();
        }
    }
}

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

struct Session {
    /// The advisory locks of this replica (the SQL lives in the store).
    locks: LockSession,
    /// Ends when the connection closes: the locks are gone from that moment.
    messages: UnboundedReceiver<AsyncMessage>,
    /// Buckets locked and offered to the pipeline.
    owned: BTreeSet<i32>,
    /// Buckets still locked but no longer offered, with the deadline to unlock them anyway.
    releasing: BTreeMap<i32, Instant>,
    members_seen: i64,
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
    while !shutdown.is_cancelled() {
        // Wait for the connection gate's turn first: the lease timeout bounds the attempt,
        // not the backoff of a database that refuses connections.
        tokio::select! {
            _ = connector.gate().turn() => {}
            _ = shutdown.cancelled() => return,
        }
        let opened = tokio::select! {
            opened = tokio::time::timeout(config.lease_timeout, open(&connector, &table, &config)) => {
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
                    &metrics,
                    &shutdown,
                )
                .await;
                revoke(&ownership, &metrics, config.buckets);
                let Some(error) = error else {
                    return; // shutdown
                };
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
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Option<CoordinationError> {
    let mut ticker = tokio::time::interval(config.rebalance_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            _ = ticker.tick() => {
                tokio::time::timeout(config.lease_timeout, tick(session, config, ownership, in_flight))
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

async fn open(
    connector: &Connector,
    table: &TableName,
    config: &CoordinatorConfig,
) -> Result<Session, CoordinationError> {
    let (client, messages) = connector.connect_dedicated().await?;
    let locks = LockSession::open(client, table).await?;
    let mut slot = None;
    for candidate in 0..MAX_MEMBERS {
        if locks.try_lock(NS_MEMBER + candidate).await? {
            slot = Some(candidate);
            break;
        }
    }
    if slot.is_none() {
        tracing::warn!("more than {MAX_MEMBERS} relays registered; counting this one anyway");
    }
    // Every replica holds a shared lock on a key derived from its bucket count, so replicas
    // configured differently see each other.
    locks
        .lock_shared(NS_COUNT + i64::from(config.buckets))
        .await?;
    Ok(Session {
        locks,
        messages,
        owned: BTreeSet::new(),
        releasing: BTreeMap::new(),
        members_seen: 0,
    })
}

async fn tick(
    session: &mut Session,
    config: &CoordinatorConfig,
    ownership: &watch::Sender<Ownership>,
    in_flight: &InFlight,
) -> Result<(), CoordinationError> {
    let lease_start = Instant::now();
    let (members, counts) = session.locks.census(NS_MEMBER, NS_COUNT).await?;
    let members = members.max(1);
    let members_before = session.members_seen;
    let before = session.owned.len();
    session.members_seen = members;

    let target = if counts > 1 {
        // Replicas disagree on relay.buckets: their buckets overlap, so nobody may claim.
        if before > 0 {
            tracing::error!(
                "relays on this table are configured with different relay.buckets; \
                 stopped claiming until they agree"
            );
        }
        0
    } else {
        usize::try_from((i64::from(config.buckets) + members - 1) / members).unwrap_or(0)
    };
    if session.owned.len() > target {
        let extra: Vec<i32> = session
            .owned
            .iter()
            .rev()
            .take(session.owned.len() - target)
            .copied()
            .collect();
        let deadline = Instant::now() + config.release_timeout;
        for b in extra {
            session.owned.remove(&b);
            session.releasing.insert(b, deadline);
        }
    } else if session.owned.len() < target {
        // Buckets being released are still ours: take them back first (locking them again
        // would stack a second lock on the same key).
        while session.owned.len() < target {
            let Some((b, _)) = session.releasing.pop_first() else {
                break;
            };
            session.owned.insert(b);
        }
        for bucket in 0..config.buckets {
            if session.owned.len() >= target {
                break;
            }
            if session.owned.contains(&bucket) {
                continue;
            }
            if session
                .locks
                .try_lock(NS_BUCKET + i64::from(bucket))
                .await?
            {
                session.owned.insert(bucket);
            }
        }
    }
    if session.owned.len() != before || members != members_before {
        tracing::info!(
            owned = session.owned.len(),
            buckets = config.buckets,
            relays = members,
            "bucket ownership changed"
        );
    }
    let next = Ownership {
        buckets: session.owned.iter().copied().collect(),
        count: config.buckets,
        valid_until: lease_start + config.lease_timeout,
    };
    // Renewing a live lease is silent; a change of buckets or a lease that had lapsed wakes
    // the pipeline.
    ownership.send_if_modified(|current| {
        let wake = current.buckets != next.buckets || !current.leased();
        *current = next;
        wake
    });
    // Published first, checked second: see `InFlight::begin_claim`.
    finish_releases(session, in_flight).await
}

/// Unlocks released buckets whose claims and events are no longer in flight (or whose
/// deadline passed: then an event still in flight may be published again by the next owner).
async fn finish_releases(
    session: &mut Session,
    in_flight: &InFlight,
) -> Result<(), CoordinationError> {
    let now = Instant::now();
    let done: Vec<(i32, bool)> = session
        .releasing
        .iter()
        .filter_map(|(b, deadline)| {
            let busy = in_flight.busy(*b);
            (!busy || now >= *deadline).then_some((*b, busy))
        })
        .collect();
    let forced = done.iter().filter(|(_, busy)| *busy).count();
    if forced > 0 {
        tracing::warn!(
            buckets = forced,
            "released buckets still had events in flight at the release deadline; \
             the next owner may publish them again"
        );
    }
    for (b, _) in done {
        session.locks.unlock(NS_BUCKET + i64::from(b)).await?;
        session.releasing.remove(&b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owning(buckets: Vec<i32>) -> watch::Sender<Ownership> {
        watch::Sender::new(Ownership {
            buckets,
            count: 8,
            valid_until: Instant::now() + Duration::from_secs(60),
        })
    }

    #[test]
    fn a_running_claim_keeps_its_buckets_busy_until_its_events_settle() {
        let in_flight = InFlight::default();
        let tx = owning(vec![1, 2]);
        let mut rx = tx.subscribe();

        let (ownership, claim) = in_flight.begin_claim(&mut rx);
        assert_eq!(ownership.buckets, vec![1, 2]);
        assert!(in_flight.busy(1) && in_flight.busy(2) && !in_flight.busy(3));

        claim.claimed([2, 2]);
        assert!(!in_flight.busy(1), "no event of bucket 1 was claimed");
        assert!(in_flight.busy(2));
        in_flight.settled(&[2]);
        assert!(
            in_flight.busy(2),
            "one event of bucket 2 is still in flight"
        );
        in_flight.settled(&[2]);
        assert!(!in_flight.busy(2));
        assert_eq!(in_flight.events(), 0);
    }

    #[test]
    fn an_abandoned_claim_holds_nothing() {
        let in_flight = InFlight::default();
        let tx = owning(vec![5]);
        let mut rx = tx.subscribe();
        let (_, claim) = in_flight.begin_claim(&mut rx);
        assert!(in_flight.busy(5));
        drop(claim);
        assert!(!in_flight.busy(5));
    }

    #[test]
    fn a_claim_begun_after_a_release_sees_the_new_ownership() {
        let in_flight = InFlight::default();
        let tx = owning(vec![1, 2]);
        let mut rx = tx.subscribe();
        // The coordinator releases bucket 2 (publishes first) ...
        tx.send_modify(|o| o.buckets = vec![1]);
        // ... and a claim that starts now cannot cover it.
        let (ownership, _claim) = in_flight.begin_claim(&mut rx);
        assert_eq!(ownership.buckets, vec![1]);
        assert!(!in_flight.busy(2));
    }

    #[test]
    fn no_lease_no_claims() {
        assert!(!Ownership::none(4).usable());
        assert!(!Ownership::none(4).leased());
        let empty = Ownership {
            buckets: vec![],
            count: 4,
            valid_until: Instant::now() + Duration::from_secs(5),
        };
        assert!(empty.leased() && !empty.usable());
    }
}
