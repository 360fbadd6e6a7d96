//! Dead-letter handling for operators: listing dead events and replaying them on purpose.
//! Both take any client or transaction, so an application can run them in its own transaction.

use std::time::SystemTime;

use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;
use crate::config::TableName;

/// A dead event as listed by `outbox-relay dead list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadEvent {
    /// Event ID.
    pub id: Uuid,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// Failed attempts.
    pub attempts: i32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the event was written (RFC 3339, UTC).
    pub created_at: String,
}

/// Dead events in write order (oldest first), at most `limit`, optionally of one aggregate
/// type. Reads through the dead partial index.
pub async fn dead_events(
    client: &impl GenericClient,
    table: &TableName,
    limit: i64,
    aggregate_type: Option<&str>,
) -> Result<Vec<DeadEvent>, StoreError> {
    let sql = format!(
        "SELECT id, aggregate_type, aggregate_id, event_type, attempts, last_error, created_at \
         FROM {} WHERE status = 'dead' AND ($1::text IS NULL OR aggregate_type = $1) \
         ORDER BY seq LIMIT $2",
        table.qualified()
    );
    let rows = client.query(&sql, &[&aggregate_type, &limit]).await?;
    Ok(rows.iter().map(dead_event).collect())
}

/// The `limit` most recently written dead events, newest first (the status page's list).
/// Reads through the dead partial index.
pub async fn latest_dead_events(
    client: &impl GenericClient,
    table: &TableName,
    limit: i64,
) -> Result<Vec<DeadEvent>, StoreError> {
    let sql = format!(
        "SELECT id, aggregate_type, aggregate_id, event_type, attempts, last_error, created_at \
         FROM {} WHERE status = 'dead' ORDER BY seq DESC LIMIT $1",
        table.qualified()
    );
    let rows = client.query(&sql, &[&limit]).await?;
    Ok(rows.iter().map(dead_event).collect())
}

fn dead_event(r: &tokio_postgres::Row) -> DeadEvent {
    DeadEvent {
        id: r.get(0),
        aggregate_type: r.get(1),
        aggregate_id: r.get(2),
        event_type: r.get(3),
        attempts: r.get(4),
        last_error: r.get(5),
        created_at: humantime::format_rfc3339_millis(r.get::<_, SystemTime>(6)).to_string(),
    }
}

/// Which dead events to replay.
#[derive(Debug, Clone)]
pub enum ReplaySelection {
    /// These IDs (only those that are dead; others are left alone).
    Ids(Vec<Uuid>),
    /// Every dead event, optionally of one aggregate type and written since a time.
    AllDead {
        /// Only this aggregate type.
        aggregate_type: Option<String>,
        /// Only events created at or after this time.
        since: Option<SystemTime>,
    },
}

/// A replayed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// Event ID.
    pub id: Uuid,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
}

/// What a replay sets: pending, no attempts, due now.
const REPLAY_SET: &str = "SET status = 'pending', attempts = 0, available_at = now()";

/// The replay of chosen dead events, `$1 uuid[]`. `status` is compared under "C" (as
/// [`crate::store::PENDING`]): the planner cannot use the dead index's predicate, and looks
/// the ids up in the primary key instead of walking every dead row (which statistics taken
/// when nothing was dead make it believe is free).
pub fn replay_ids_sql(table: &TableName) -> String {
    format!(
        "UPDATE {} {REPLAY_SET} WHERE status = 'dead' COLLATE \"C\" AND id = ANY($1::uuid[]) \
         RETURNING id, aggregate_type, aggregate_id, seq",
        table.qualified()
    )
}

/// Moves the selected dead events back to pending with `attempts = 0`, due now, and wakes
/// sleeping relays (a NOTIFY, delivered when the caller's transaction commits). `last_error`
/// is kept as the record of why the event died until it is dispatched (which clears it).
/// Returns the replayed events in write order.
pub async fn replay(
    client: &impl GenericClient,
    table: &TableName,
    selection: &ReplaySelection,
) -> Result<Vec<Replayed>, StoreError> {
    let t = table.qualified();
    let rows = match selection {
        ReplaySelection::Ids(ids) => client.query(&replay_ids_sql(table), &[ids]).await?,
        ReplaySelection::AllDead {
            aggregate_type,
            since,
        } => {
            client
                .query(
                    &format!(
                        "UPDATE {t} {REPLAY_SET} WHERE status = 'dead' \
                           AND ($1::text IS NULL OR aggregate_type = $1) \
                           AND ($2::timestamptz IS NULL OR created_at >= $2) \
                         RETURNING id, aggregate_type, aggregate_id, seq"
                    ),
                    &[aggregate_type, since],
                )
                .await?
        }
    };
    let mut replayed: Vec<(i64, Replayed)> = rows
        .iter()
        .map(|r| {
            (
                r.get(3),
                Replayed {
                    id: r.get(0),
                    aggregate_type: r.get(1),
                    aggregate_id: r.get(2),
                },
            )
        })
        .collect();
    replayed.sort_by_key(|(seq, _)| *seq);
    if !replayed.is_empty() {
        client
            .execute("SELECT pg_notify($1, '')", &[&table.name()])
            .await?;
    }
    Ok(replayed.into_iter().map(|(_, r)| r).collect())
}
