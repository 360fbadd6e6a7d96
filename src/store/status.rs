//! Read-only backlog queries for operators: the snapshot behind the table-derived gauges and
//! the `status` command. They run on a timer on every replica, so their cost is bounded: each
//! reads at most [`WINDOW`] of the oldest pending, dead and dispatched rows through their
//! partial indexes, with the pinned planner settings ([`crate::store::PLAN_SETTINGS`]).
//! Up to the window every figure is exact; past it the counts are estimates, and say so
//! ([`Backlog::estimated`], [`Status::dispatched_estimated`]). What the table retains costs
//! nothing, and a deep backlog costs what a backlog of [`WINDOW`] costs.
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
use tokio_postgres::Client;

use super::{PLAN_SETTINGS, StoreError, planned};
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
    /// True when more than [`WINDOW`] events are pending or dead: the counts past the window are
    /// estimated (from the `seq` span after it, spread over the types in the window's
    /// proportions), and `retrying`, `blocked`, the ages and the failure reasons are those of
    /// the window, the oldest events.
    pub estimated: bool,
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
    /// Dispatched rows still retained (until `retention.dispatched` has passed): exact up to
    /// [`WINDOW`], past it the table's live-row estimate minus the backlog.
    pub dispatched: i64,
    /// True when `dispatched` is an estimate (more than [`WINDOW`] retained).
    pub dispatched_estimated: bool,
    /// Seconds until the next event in backoff becomes due (`None` when none waits).
    pub next_retry_in_seconds: Option<f64>,
    /// When the next event in backoff becomes due, RFC 3339 (`None` when none waits).
    pub next_retry_at: Option<String>,
    /// The most common current failure reasons among pending events that failed at least
    /// once and dead events (at most 10 groups, most frequent first).
    pub failures: Vec<FailureReason>,
}

/// How many of the oldest pending rows, and of the oldest dead rows, a status query reads. Up
/// to this many, every count and age is exact; past it, the counts beyond the window are
/// estimated ([`Backlog::estimated`]) so that a refresh costs the same at a backlog of 10,000
/// and of 10 million: one ordered walk of `WINDOW` entries of each partial index, whatever
/// the table retains.
pub const WINDOW: i64 = 10_000;

/// The SQL of the periodic status statements, rendered for one table. Each runs with the
/// pinned planner settings ([`crate::store::PLAN_SETTINGS`]): the pending and dead windows are
/// ordered walks of their partial indexes that stop at `$1` rows, the dispatched count a walk
/// of the dispatched index that stops at `$1 + 1`; nothing reads retained rows past that.
#[derive(Debug, Clone)]
pub struct StatusQueries {
    /// `$1 int8` window: per aggregate type, the window's counts and ages, plus the windows'
    /// sizes and `seq` bounds and the last pending and dead `seq` (for the estimate past them).
    pub backlog: String,
    /// `$1 int8` window, `$2 text` regclass: the next retry, `now()`, dispatched rows counted up
    /// to `$1 + 1`, and the table's live-row estimate (`pg_stat_get_live_tuples`).
    pub summary: String,
    /// `$1 int8` window: the most common failure reasons in the windows.
    pub failures: String,
}

impl StatusQueries {
    /// Renders the statements for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.qualified();
        let windows = format!(
            "pw AS MATERIALIZED ( \
                 SELECT seq, aggregate_type, aggregate_id, created_at, available_at, attempts, \
                        last_error \
                 FROM {t} WHERE status = 'pending' ORDER BY seq LIMIT $1), \
             dw AS MATERIALIZED ( \
                 SELECT seq, aggregate_type, last_error \
                 FROM {t} WHERE status = 'dead' ORDER BY seq LIMIT $1)"
        );
        Self {
            backlog: format!(
                "WITH {windows}, \
                 b AS ( \
                     SELECT aggregate_id, min(seq) AS seq FROM pw \
                     WHERE available_at > now() GROUP BY aggregate_id), \
                 p AS ( \
                     SELECT pw.aggregate_type, \
                            count(*) AS pending, \
                            count(*) FILTER (WHERE pw.available_at > now()) AS retrying, \
                            count(*) FILTER (WHERE pw.available_at <= now() \
                                               AND b.aggregate_id IS NOT NULL) AS blocked, \
                            extract(epoch FROM now() - min(pw.created_at))::float8 \
                                AS oldest_pending, \
                            extract(epoch FROM now() \
                                - min(greatest(pw.created_at, pw.available_at)) \
                                  FILTER (WHERE pw.available_at <= now() \
                                            AND b.aggregate_id IS NULL))::float8 \
                                AS oldest_eligible \
                     FROM pw LEFT JOIN b \
                          ON b.aggregate_id = pw.aggregate_id AND b.seq < pw.seq \
                     GROUP BY pw.aggregate_type), \
                 d AS (SELECT aggregate_type, count(*) AS dead FROM dw GROUP BY aggregate_type) \
                 SELECT coalesce(p.aggregate_type, d.aggregate_type), \
                        coalesce(p.pending, 0), coalesce(p.retrying, 0), coalesce(p.blocked, 0), \
                        coalesce(d.dead, 0), p.oldest_pending, p.oldest_eligible, \
                        (SELECT count(*) FROM pw), (SELECT max(seq) FROM pw), \
                        (SELECT count(*) FROM dw), (SELECT min(seq) FROM dw), \
                        (SELECT max(seq) FROM dw), \
                        (SELECT seq FROM {t} WHERE status = 'pending' ORDER BY seq DESC LIMIT 1), \
                        (SELECT seq FROM {t} WHERE status = 'dead' ORDER BY seq DESC LIMIT 1) \
                 FROM p FULL JOIN d ON d.aggregate_type = p.aggregate_type"
            ),
            summary: format!(
                "WITH {windows} \
                 SELECT (SELECT min(available_at) FROM pw WHERE available_at > now()), \
                        now(), \
                        (SELECT count(*) FROM ( \
                             SELECT 1 FROM {t} WHERE status = 'dispatched' LIMIT $1 + 1) x), \
                        pg_stat_get_live_tuples($2::text::regclass)"
            ),
            failures: format!(
                "WITH {windows} \
                 SELECT status, reason, count(*) FROM ( \
                     SELECT 'pending' AS status, left(last_error, 200) AS reason FROM pw \
                     WHERE attempts > 0 AND last_error IS NOT NULL \
                     UNION ALL \
                     SELECT 'dead', left(coalesce(last_error, '(no reason recorded)'), 200) \
                     FROM dw \
                 ) f GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 10"
            ),
        }
    }
}

/// One window's size and `seq` bounds, and the last `seq` of its status in the table.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    rows: i64,
    first: Option<i64>,
    last: Option<i64>,
    table_last: Option<i64>,
}

impl Window {
    /// Rows of the status past the window: none when the window was not full; otherwise the
    /// `seq` span after it times the window's density (rows per `seq`). For pending rows, which
    /// the relay settles from the head, the density is about 1 and the estimate an upper bound
    /// (rolled-back inserts leave holes in `seq`).
    fn beyond(&self) -> i64 {
        match (self.first, self.last, self.table_last) {
            (Some(first), Some(last), Some(table_last)) if self.rows >= WINDOW => {
                let span = (table_last - last).max(0) as f64;
                let density = self.rows as f64 / ((last - first + 1).max(1) as f64);
                (span * density.min(1.0)).round() as i64
            }
            _ => 0,
        }
    }
}

/// Adds `beyond` rows to the per-type counts in proportion to each type's share of the window
/// (`count` reads and writes one type's count).
fn spread(
    types: &mut BTreeMap<String, TypeBacklog>,
    window: i64,
    beyond: i64,
    count: fn(&mut TypeBacklog) -> &mut i64,
) {
    if beyond == 0 || window == 0 {
        return;
    }
    for entry in types.values_mut() {
        let n = count(entry);
        *n += ((*n as f64) * (beyond as f64) / (window as f64)).round() as i64;
    }
}

/// The backlog in one statement, reading at most [`WINDOW`] pending and [`WINDOW`] dead rows
/// (the oldest of each, through their partial indexes): exact up to there, estimated past it.
pub async fn backlog(client: &Client, table: &TableName) -> Result<Backlog, StoreError> {
    let sql = StatusQueries::new(table).backlog;
    let rows = planned(client, &begin(), client.query(&sql, &[&WINDOW])).await?;
    let mut backlog = Backlog::default();
    let (mut pending, mut dead) = (Window::default(), Window::default());
    for row in &rows {
        let entry = TypeBacklog {
            pending: row.get(1),
            retrying: row.get(2),
            blocked: row.get(3),
            dead: row.get(4),
            oldest_pending_age_seconds: row.get::<_, Option<f64>>(5).map(|a| a.max(0.0)),
            oldest_eligible_age_seconds: row.get::<_, Option<f64>>(6).map(|a| a.max(0.0)),
        };
        pending = Window {
            rows: row.get(7),
            first: None,
            last: row.get(8),
            table_last: row.get(12),
        };
        dead = Window {
            rows: row.get(9),
            first: row.get(10),
            last: row.get(11),
            table_last: row.get(13),
        };
        backlog.by_aggregate_type.insert(row.get(0), entry);
    }
    // The pending window starts at the oldest pending row; its first seq only matters for the
    // density, which for pending rows is taken as 1 (see `Window::beyond`).
    pending.first = pending.last.map(|last| last - pending.rows + 1);
    let (more_pending, more_dead) = (pending.beyond(), dead.beyond());
    spread(
        &mut backlog.by_aggregate_type,
        pending.rows,
        more_pending,
        |e| &mut e.pending,
    );
    spread(&mut backlog.by_aggregate_type, dead.rows, more_dead, |e| {
        &mut e.dead
    });
    backlog.estimated = more_pending > 0 || more_dead > 0;
    for entry in backlog.by_aggregate_type.values() {
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
    }
    Ok(backlog)
}

/// `BEGIN` with the pinned planner settings.
fn begin() -> String {
    format!("BEGIN; {PLAN_SETTINGS}")
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The full status snapshot: the backlog, retained dispatched rows, the next retry and the
/// current failure reasons. Like [`backlog`], it reads at most [`WINDOW`] pending, dead and
/// dispatched rows: past that, the dispatched count is the table's live-row estimate minus the
/// backlog ([`Status::dispatched_estimated`]), and the next retry and failure reasons are
/// those of the oldest [`WINDOW`] pending and dead events.
pub async fn status(client: &Client, table: &TableName) -> Result<Status, StoreError> {
    let backlog = backlog(client, table).await?;
    let sql = StatusQueries::new(table);
    let row = planned(
        client,
        &begin(),
        client.query_one(&sql.summary, &[&WINDOW, &table.regclass()]),
    )
    .await?;
    let next_retry: Option<SystemTime> = row.get(0);
    let now: SystemTime = row.get(1);
    let counted: i64 = row.get(2);
    let live: i64 = row.get(3);
    let (dispatched, dispatched_estimated) = if counted > WINDOW {
        ((live - backlog.pending - backlog.dead).max(counted), true)
    } else {
        (counted, false)
    };
    let failures = planned(client, &begin(), client.query(&sql.failures, &[&WINDOW]))
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
        dispatched,
        dispatched_estimated,
        next_retry_in_seconds: next_retry.map(|at| {
            at.duration_since(now)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64()
        }),
        next_retry_at: next_retry.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
        failures,
    })
}
