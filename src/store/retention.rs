//! Retention: deleting dispatched rows older than a duration, in small batches, so the table
//! and its indexes do not grow without bound. Used by `outbox-relay purge` and by the relay's
//! background task ([`purge_loop`], every `retention.interval`).
//!
//! Only `status = 'dispatched'` rows are ever deleted, found through the `dispatched_at`
//! partial index. Each batch locks its rows with `FOR UPDATE SKIP LOCKED`, so any number of
//! replicas (and a manual `purge`) can run at once: they split the rows instead of waiting
//! for each other, and no row is counted twice.

use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus_client::metrics::counter::Counter;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{PLAN_SETTINGS, StoreError, after_deadline, planned, within};
use crate::config::TableName;

/// Pause between two batches of one purge run, to leave room for producers and the relay.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// The purge's statement: `$1 int8` age in milliseconds, `$2 int8` rows at most. Run with the
/// pinned planner settings ([`crate::store::PLAN_SETTINGS`]), it is a range scan of the
/// dispatched index from its oldest end that stops at `$2` rows: when nothing is old enough
/// it reads one index page, however many rows the table retains (without them, a table never
/// analyzed gets a sequential scan of every retained row, each `retention.interval`).
pub fn purge_sql(table: &TableName) -> String {
    let t = table.qualified();
    format!(
        "DELETE FROM {t} WHERE id IN ( \
           SELECT id FROM {t} \
           WHERE status = 'dispatched' \
             AND dispatched_at < now() - $1::int8 * interval '1 millisecond' \
           ORDER BY dispatched_at \
           LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )
}

/// Deletes up to `limit` dispatched rows whose `dispatched_at` is older than `older_than`;
/// returns how many. Runs in its own transaction.
pub async fn purge_batch(
    client: &Client,
    table: &TableName,
    older_than: Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    let older_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let sql = purge_sql(table);
    planned(
        client,
        &format!("BEGIN; {PLAN_SETTINGS}"),
        client.execute(&sql, &[&older_ms, &limit]),
    )
    .await
}

/// Purges in batches of `batch` until a batch deletes fewer rows; returns the total. Each
/// batch is its own statement in its own transaction, so locks and WAL stay small. `on_batch` hears each batch's count as soon as it is deleted (a long purge
/// shows progress, and rows deleted before an error are still counted).
pub async fn purge(
    client: &Client,
    table: &TableName,
    older_than: Duration,
    batch: i64,
    mut on_batch: impl FnMut(u64),
) -> Result<u64, StoreError> {
    in_batches(
        batch,
        || purge_batch(client, table, older_than, batch),
        &mut on_batch,
    )
    .await
}

/// Runs `delete` (one statement deleting at most `batch` rows) until it deletes fewer than
/// `batch`, pausing between statements, telling `on_batch` each statement's count; returns
/// the total (also the inbox purge's loop).
pub async fn in_batches<F, Fut>(
    batch: i64,
    mut delete: F,
    mut on_batch: impl FnMut(u64),
) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let deleted = delete().await?;
        on_batch(deleted);
        total += deleted;
        if deleted < u64::try_from(batch).unwrap_or(0) {
            return Ok(total);
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}

/// What the background purge needs.
#[derive(Debug, Clone)]
pub struct RetentionSchedule {
    /// Dispatched rows older than this are deleted (`retention.dispatched`; zero deletes
    /// every dispatched row, e.g. left over from before retention was set to `0s`).
    pub older_than: Duration,
    /// Rows per statement (`retention.batch_size`).
    pub batch: i64,
    /// Time between purge runs (`retention.interval`).
    pub interval: Duration,
    /// Counts deleted rows (`outbox_retention_deleted_total`).
    pub deleted: Counter,
    /// Deadline of each batch (the store's, see [`super::Store::deadline`]): a connection
    /// that stops answering is replaced, not waited on.
    pub deadline: Option<Duration>,
}

/// The background purge: every `schedule.interval` (first run at start-up), deletes old
/// dispatched rows in batches until a batch comes back short. Failures are logged and
/// retried at the next interval; shutdown interrupts it at once.
pub async fn purge_loop(
    pool: Pool,
    table: TableName,
    schedule: RetentionSchedule,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(schedule.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let run = purge_run(&pool, &table, &schedule);
        let result = tokio::select! {
            result = run => result,
            _ = shutdown.cancelled() => return,
        };
        match result {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(
                deleted,
                older_than = %humantime::format_duration(schedule.older_than),
                "retention: purged old dispatched events"
            ),
            // The relay's own health state reports (and logs) a lost database.
            Err(error) if error.is_connection() => {
                tracing::debug!(%error, "retention purge failed; retrying next interval");
            }
            Err(error) => {
                tracing::warn!(%error, "retention purge failed; retrying next interval");
            }
        }
    }
}

async fn purge_run(
    pool: &Pool,
    table: &TableName,
    schedule: &RetentionSchedule,
) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let result = in_batches(
        schedule.batch,
        || {
            within(
                schedule.deadline,
                purge_batch(&client, table, schedule.older_than, schedule.batch),
            )
        },
        |n| {
            schedule.deleted.inc_by(n);
        },
    )
    .await;
    after_deadline(pool, client, &result);
    result
}
