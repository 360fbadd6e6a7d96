//! Read-only backlog queries for operators: the snapshot behind the table-derived gauges and
//! the `status` command. Every query reads only pending, dead or dispatched rows through their
//! partial indexes, so its cost follows the backlog, not the number of retained rows.
//!
//! Definitions (shared by the gauges, `/healthz` and `status`):
//! - *retrying*: pending and waiting out a backoff (`available_at > now()`).
//! - *blocked*: pending and due, but behind an earlier pending event of the same aggregate
//!   that waits out a backoff; the relay holds it back to keep the aggregate's order.
//! - *eligible*: pending, due and not blocked: what the relay can publish right now. Its age
//!   counts from the moment it became due (`greatest(created_at, available_at)`), so an event
//!   whose backoff just ended is not reported as old: an old eligible event means the relay
//!   is not keeping up.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio_postgres::GenericClient;

use super::StoreError;
use crate::config::TableName;

/// Pending and dead counts and ages for one aggregate type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeBacklog {
    /// Pending events (including retrying and blocked ones).
    pub pending: i64,
    /// Pending events waiting out a backoff.
    pub retrying: i64,
    /// Pending, due events held back behind an earlier event of their aggregate in backoff.
    pub blocked: i64,
    /// Dead events.
    pub dead: i64,
    /// Age of the oldest pending event, seconds (`None` when nothing is pending).
    pub oldest_pending_age_seconds: Option<f64>,
    /// How long the oldest eligible event has been due, seconds (`None` when none).
    pub oldest_eligible_age_seconds: Option<f64>,
}

/// The backlog: what the gauges show.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Backlog {
    /// Pending events (including retrying and blocked ones).
    pub pending: i64,
    /// Pending events waiting out a backoff.
    pub retrying: i64,
    /// Pending, due events held back behind an earlier event of their aggregate in backoff.
    pub blocked: i64,
    /// Dead events.
    pub dead: i64,
    /// Age of the oldest pending event (`None` when nothing is pending).
    pub oldest_pending_age_seconds: Option<f64>,
    /// How long the oldest eligible event has been due (`None` when none is eligible).
    pub oldest_eligible_age_seconds: Option<f64>,
    /// Per aggregate type (types with pending or dead events only).
    pub by_aggregate_type: BTreeMap<String, TypeBacklog>,
}

/// One group of failures with the same reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureReason {
    /// `pending` (failed at least once, will be retried) or `dead` (needs a replay).
    pub status: String,
    /// The `last_error` text (truncated to 200 characters).
    pub reason: String,
    /// How many events have it.
    pub events: i64,
}

/// Everything `outbox-relay status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// The table.
    pub table: String,
    /// The backlog (flattened into the top level of the JSON).
    #[serde(flatten)]
    pub backlog: Backlog,
    /// Dispatched rows still retained (until `retention.dispatched` has passed).
    pub dispatched: i64,
    /// Seconds until the next event in backoff becomes due (`None` when none waits).
    pub next_retry_in_seconds: Option<f64>,
    /// When the next event in backoff becomes due, RFC 3339 (`None` when none waits).
    pub next_retry_at: Option<String>,
    /// The most common current failure reasons among pending events that failed at least
    /// once and dead events (at most 10 groups, most frequent first).
    pub failures: Vec<FailureReason>,
}

/// The backlog in one query. Pending rows are read through the pending partial index (twice:
/// once for the aggregates that are in backoff, once for the counts), dead rows through the
/// dead partial index.
pub async fn backlog(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Backlog, StoreError> {
    let t = table.qualified();
    let sql = format!(
        "SELECT coalesce(p.aggregate_type, d.aggregate_type), \
                coalesce(p.pending, 0), coalesce(p.retrying, 0), coalesce(p.blocked, 0), \
                coalesce(d.dead, 0), p.oldest_pending, p.oldest_eligible \
         FROM ( \
             SELECT e.aggregate_type, \
                    count(*) AS pending, \
                    count(*) FILTER (WHERE e.available_at > now()) AS retrying, \
                    count(*) FILTER (WHERE e.available_at <= now() \
                                       AND b.aggregate_id IS NOT NULL) AS blocked, \
                    extract(epoch FROM now() - min(e.created_at))::float8 AS oldest_pending, \
                    extract(epoch FROM now() - min(greatest(e.created_at, e.available_at)) \
                        FILTER (WHERE e.available_at <= now() AND b.aggregate_id IS NULL) \
                    )::float8 AS oldest_eligible \
             FROM {t} e \
             LEFT JOIN ( \
                 SELECT aggregate_id, min(seq) AS seq FROM {t} \
                 WHERE status = 'pending' AND available_at > now() \
                 GROUP BY aggregate_id \
             ) b ON b.aggregate_id = e.aggregate_id AND b.seq < e.seq \
             WHERE e.status = 'pending' \
             GROUP BY e.aggregate_type \
         ) p FULL JOIN ( \
             SELECT aggregate_type, count(*) AS dead FROM {t} \
             WHERE status = 'dead' GROUP BY aggregate_type \
         ) d ON d.aggregate_type = p.aggregate_type"
    );
    let mut backlog = Backlog::default();
    for row in client.query(&sql, &[]).await? {
        let entry = TypeBacklog {
            pending: row.get(1),
            retrying: row.get(2),
            blocked: row.get(3),
            dead: row.get(4),
            oldest_pending_age_seconds: row.get::<_, Option<f64>>(5).map(|a| a.max(0.0)),
            oldest_eligible_age_seconds: row.get::<_, Option<f64>>(6).map(|a| a.max(0.0)),
        };
        backlog.pending += entry.pending;
        backlog.retrying += entry.retrying;
        backlog.blocked += entry.blocked;
        backlog.dead += entry.dead;
        backlog.oldest_pending_age_seconds = max_opt(
            backlog.oldest_pending_age_seconds,
            entry.oldest_pending_age_seconds,
        );
        backlog.oldest_eligible_age_seconds = max_opt(
            backlog.oldest_eligible_age_seconds,
            entry.oldest_eligible_age_seconds,
        );
        backlog.by_aggregate_type.insert(row.get(0), entry);
    }
    Ok(backlog)
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The full status snapshot: the backlog, retained dispatched rows, the next retry and the
/// current failure reasons.
pub async fn status(client: &impl GenericClient, table: &TableName) -> Result<Status, StoreError> {
    let backlog = backlog(client, table).await?;
    let t = table.qualified();
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {t} WHERE status = 'dispatched'), \
                        (SELECT min(available_at) FROM {t} \
                         WHERE status = 'pending' AND available_at > now()), \
                        now()"
            ),
            &[],
        )
        .await?;
    let next_retry: Option<SystemTime> = row.get(1);
    let now: SystemTime = row.get(2);
    let failures = client
        .query(
            &format!(
                "SELECT status, reason, count(*) FROM ( \
                     SELECT 'pending' AS status, left(last_error, 200) AS reason FROM {t} \
                     WHERE status = 'pending' AND attempts > 0 AND last_error IS NOT NULL \
                     UNION ALL \
                     SELECT 'dead', left(coalesce(last_error, '(no reason recorded)'), 200) \
                     FROM {t} WHERE status = 'dead' \
                 ) f GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 10"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| FailureReason {
            status: r.get(0),
            reason: r.get(1),
            events: r.get(2),
        })
        .collect();
    Ok(Status {
        table: table.to_string(),
        backlog,
        dispatched: row.get(0),
        next_retry_in_seconds: next_retry.map(|at| {
            at.duration_since(now)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64()
        }),
        next_retry_at: next_retry.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
        failures,
    })
}
