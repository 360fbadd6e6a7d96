//! One coordination session and what a tick does with it: register this replica (a member
//! lock and a shared lock on its bucket count), count the live replicas, shed buckets above
//! the target into a release, take free ones, and unlock released buckets once nothing of
//! theirs is in flight. The SQL lives in [`crate::store::coordination`].

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use tokio::sync::{mpsc::UnboundedReceiver, watch};
use tokio_postgres::AsyncMessage;

use super::{CoordinationError, CoordinatorConfig, InFlight, Ownership};
use crate::{
    config::TableName,
    store::{connect::Connector, coordination::LockSession, session::SessionId},
};

/// Advisory-lock class ids (high 32 bits of the key; the low 32 bits are the table's oid).
const NS_MEMBER: i64 = 0x4F52_0000;
const NS_BUCKET: i64 = 0x4F53_0000;
const NS_COUNT: i64 = 0x4F54_0000;
/// Member slots tried when registering.
const MAX_MEMBERS: i64 = 1024;

/// The dedicated coordination connection and the buckets its locks hold.
pub(super) struct Session {
    /// The advisory locks of this replica (the SQL lives in the store).
    locks: LockSession,
    /// Ends when the connection closes: the locks are gone from that moment.
    pub(super) messages: UnboundedReceiver<AsyncMessage>,
    /// Buckets locked and offered to the pipeline.
    pub(super) owned: BTreeSet<i32>,
    /// Buckets still locked but no longer offered, with the deadline to unlock them anyway.
    pub(super) releasing: BTreeMap<i32, Instant>,
    pub(super) members_seen: i64,
    /// The member slot this replica holds (counted by every replica's census); `None` while it
    /// stands down or when every slot was taken.
    member: Option<i64>,
    /// Its broker has been unusable too long: it holds no buckets and no member slot.
    stood_down: bool,
}

/// Opens a coordination session and registers this replica. `zombie` is this relay's previous
/// session when it was abandoned without closing (it stopped answering): it is ended first, so
/// its locks do not keep buckets from everyone, nor count as a second relay.
pub(super) async fn open(
    connector: &Connector,
    table: &TableName,
    config: &CoordinatorConfig,
    zombie: Option<SessionId>,
) -> Result<Session, CoordinationError> {
    let (client, messages) = connector.connect_dedicated().await?;
    let locks = LockSession::open(client, table).await?;
    if let Some(zombie) = zombie {
        match locks.end(zombie).await {
            Ok(true) => tracing::warn!(
                pid = zombie.pid,
                "ended this relay's previous coordination session, which stopped answering \
                 (its bucket locks are released)"
            ),
            Ok(false) => {}
            Err(error) => tracing::warn!(
                %error,
                pid = zombie.pid,
                "cannot end this relay's previous coordination session; its buckets stay \
                 locked until the server notices it is gone"
            ),
        }
    }
    // Every replica holds a shared lock on a key derived from its bucket count, so replicas
    // configured differently see each other.
    locks
        .lock_shared(NS_COUNT + i64::from(config.buckets))
        .await?;
    let mut session = Session {
        locks,
        messages,
        owned: BTreeSet::new(),
        releasing: BTreeMap::new(),
        members_seen: 0,
        member: None,
        stood_down: false,
    };
    session.register().await?;
    Ok(session)
}

impl Session {
    /// The server session behind it.
    pub(super) fn id(&self) -> SessionId {
        self.locks.id()
    }

    /// Takes a member slot: from now on every replica's census counts this one.
    async fn register(&mut self) -> Result<(), CoordinationError> {
        for candidate in 0..MAX_MEMBERS {
            if self.locks.try_lock(NS_MEMBER + candidate).await? {
                self.member = Some(candidate);
                return Ok(());
            }
        }
        tracing::warn!("more than {MAX_MEMBERS} relays registered; counting this one anyway");
        Ok(())
    }

    /// Gives the member slot up: the others stop counting this replica and take its share.
    async fn deregister(&mut self) -> Result<(), CoordinationError> {
        if let Some(slot) = self.member.take() {
            self.locks.unlock(NS_MEMBER + slot).await?;
        }
        Ok(())
    }
}

/// One rebalance. `stand_down`: the broker has been unusable for
/// `relay.broker_release_after`, so this replica lets every bucket go and stops counting as a
/// replica (the others take its share at their next tick); once it can publish again it
/// registers and takes its share back. A broker down for every replica leaves every replica
/// stood down until it returns: nothing churns meanwhile.
pub(super) async fn tick(
    session: &mut Session,
    config: &CoordinatorConfig,
    ownership: &watch::Sender<Ownership>,
    in_flight: &InFlight,
    stand_down: bool,
) -> Result<(), CoordinationError> {
    let lease_start = Instant::now();
    if stand_down && !session.stood_down {
        session.deregister().await?;
        session.stood_down = true;
        tracing::warn!(
            released = session.owned.len(),
            "broker unusable for relay.broker_release_after; letting this relay's buckets go \
             to relays that can publish"
        );
    } else if !stand_down && session.stood_down {
        session.register().await?;
        session.stood_down = false;
        tracing::info!("broker usable again; taking buckets again");
    }
    let (members, counts) = session.locks.census(NS_MEMBER, NS_COUNT).await?;
    let members = members.max(1);
    let members_before = session.members_seen;
    let before = session.owned.len();
    session.members_seen = members;

    let target = if stand_down {
        0
    } else if counts > 1 {
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
pub(super) async fn finish_releases(
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
