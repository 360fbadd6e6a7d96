//! All SQL lives here: migrations, claiming eligible events, settling publish outcomes,
//! the idle/wake-up protocol, status queries ([`status`]), dead-letter listing and replay
//! ([`admin`]), retention purges ([`retention`]), the advisory locks of replica coordination
//! ([`coordination`]), ending this relay's own abandoned sessions ([`session`]), the GRANT statements for the relay's and the
//! producers' roles ([`grants`]).
//!
//! The hot path ([`Store::read_pending`], [`Store::mark_dispatched`], [`Store::record_failures`]) runs
//! on pooled connections with cached prepared statements. [`enqueue`] takes any client or
//! transaction, so an application can write events inside its own transaction.

pub mod admin;
pub mod connect;
pub mod coordination;
pub mod gate;
pub mod grants;
pub mod migrate;
mod queries;
pub mod retention;
mod row;
pub mod session;
pub mod status;

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::{
    config::TableName,
    event::{NewEvent, OutboxEvent},
};
pub use queries::{PENDING, PLAN_SETTINGS, Queries};

/// A failure talking to Postgres. Callers branch on [`StoreError::is_connection`]: a lost
/// connection means "database down, retry later", anything else is a bug or a schema problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Getting a connection from the pool failed.
    #[error("no database connection: {}", pool_cause(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// No connection could be opened; the cause in an operator's words (from the
    /// connection gate, see [`gate::describe`]).
    #[error("cannot connect to Postgres: {0}")]
    Unavailable(String),
    /// A statement failed.
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No answer within the deadline (`database.statement_timeout` plus a grace): the
    /// connection stopped answering without closing (a frozen network path, a hung server).
    /// It is dropped from the pool with every idle connection, which were opened over the
    /// same path.
    #[error(
        "no answer from Postgres within {} (database.statement_timeout plus a grace); \
         reconnecting",
        humantime::format_duration(*.0)
    )]
    Timeout(Duration),
}

impl StoreError {
    /// True when the failure is about reaching the database rather than the statement itself.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::Unavailable(_) | StoreError::Timeout(_) => true,
            StoreError::Postgres(e) => {
                e.is_closed()
                    || e.code().is_none_or(|code| {
                        let c = code.code();
                        // 08: connection exception, 57P: operator intervention (shutdown,
                        // terminated), 53: insufficient resources.
                        c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
                    })
            }
        }
    }

    /// True when the outbox table (or its objects) does not exist: run `outbox-relay migrate`.
    pub fn is_missing_table(&self) -> bool {
        matches!(self, StoreError::Postgres(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE))
    }
}

/// What a pool error means for an operator (the server's message when there is one).
fn pool_cause(error: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match error {
        PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => match std::error::Error::source(e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        },
        PoolError::Timeout(_) => "timed out waiting for a pooled connection".to_owned(),
        other => other.to_string(),
    }
}

/// One row of [`Store::read_pending`].
#[derive(Debug, Clone)]
pub struct ReadRow {
    /// The event.
    pub event: OutboxEvent,
    /// How long its retry still waits (zero when due).
    pub due_in: Duration,
    /// The `seq` of the pending event before it in its aggregate, in the read's snapshot.
    pub prev_seq: Option<i64>,
}

/// One per-event failure to record.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The event.
    pub id: Uuid,
    /// Human-readable reason stored in `last_error`.
    pub error: String,
    /// Delay before the next attempt (ignored when `dead`).
    pub retry_in: Duration,
    /// Move the event to `dead` now.
    pub dead: bool,
}

/// What happens to confirmed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchMode {
    /// `status = 'dispatched'`, kept until the retention purge removes them.
    Mark,
    /// Deleted on dispatch (`retention.dispatched = 0`).
    Delete,
}

/// The relay's handle on the outbox table: a pool plus the SQL rendered for the table.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// The pool's connection gate: a failed checkout is reported with its cause.
    gate: Option<gate::Gate>,
    table: TableName,
    sql: std::sync::Arc<Queries>,
    dispatch: DispatchMode,
    /// How long a statement may go unanswered before its connection counts as lost (none:
    /// wait for the server).
    deadline: Option<Duration>,
}

impl Store {
    /// Creates a store over `pool` for `table`.
    pub fn new(pool: Pool, table: TableName, dispatch: DispatchMode) -> Self {
        let sql = std::sync::Arc::new(Queries::new(&table));
        Self {
            pool,
            gate: None,
            table,
            sql,
            dispatch,
            deadline: None,
        }
    }

    /// The deadline of its statements (see [`Store::with_deadline`]).
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Gives up on a statement unanswered after `deadline` (see [`StoreError::Timeout`]).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Awaits `work` (statements on one pooled connection) within the deadline.
    async fn within<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within(self.deadline, work).await
    }

    /// After `result` of work on `client`: see [`after_deadline`].
    fn after<T>(&self, client: deadpool_postgres::Object, result: &Result<T, StoreError>) {
        after_deadline(&self.pool, client, result);
    }

    /// Reports pool failures with the cause recorded by `gate` (the pool's connector's).
    pub fn with_gate(mut self, gate: gate::Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// A pooled connection; a failure carries the connection gate's cause.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|error| {
            match self.gate.as_ref().and_then(|gate| gate.last_error()) {
                Some(cause) if !matches!(error, deadpool_postgres::PoolError::Closed) => {
                    StoreError::Unavailable(cause)
                }
                _ => StoreError::Pool(error),
            }
        })
    }

    /// The table this store works on.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The pool (for status queries and tests).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The rendered SQL.
    pub fn queries(&self) -> &Queries {
        &self.sql
    }

    /// Reads up to `limit` pending events after `after_seq` in `seq` order, whether due or
    /// not (each with how long its retry still waits), only of the owned `buckets` when given.
    /// Reading writes nothing: exclusivity comes from bucket ownership, and per-aggregate
    /// order is kept by the relay in memory ([`crate::relay::scheduler`]).
    pub async fn read_pending(
        &self,
        after_seq: i64,
        limit: usize,
        buckets: Option<(&[i32], i32)>,
    ) -> Result<Vec<ReadRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (owned, count) = match buckets {
            Some((owned, count)) => (Some(owned), count),
            None => (None, 1),
        };
        let client = self.within(self.client()).await?;
        let result = self
            .within(async {
                let stmt = client.prepare_cached(&self.sql.read_pending).await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&after_seq, &limit, &owned, &count];
                planned(
                    &client,
                    &self.sql.planned_begin,
                    client.query(&stmt, &params),
                )
                .await
            })
            .await;
        self.after(client, &result);
        let rows = result?;
        rows.iter()
            .map(|row| {
                let due_in_ms: i64 = row.try_get("due_in_ms")?;
                Ok(ReadRow {
                    event: row::event(row)?,
                    due_in: Duration::from_millis(u64::try_from(due_in_ms).unwrap_or(0)),
                    prev_seq: row.try_get("prev_seq")?,
                })
            })
            .collect()
    }

    /// Settles confirmed events (only rows still pending, so a late settle never overrides a
    /// replay or another replica's outcome). Returns the number of rows changed.
    pub async fn mark_dispatched(&self, ids: &[Uuid]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = match self.dispatch {
            DispatchMode::Mark => &self.sql.mark_dispatched,
            DispatchMode::Delete => &self.sql.delete_dispatched,
        };
        let client = self.within(self.client()).await?;
        let result = self
            .within(async {
                let stmt = client.prepare_cached(sql).await?;
                planned(
                    &client,
                    &self.sql.planned_begin,
                    client.execute(&stmt, &[&ids]),
                )
                .await
            })
            .await;
        self.after(client, &result);
        result
    }

    /// Records failed attempts: `attempts + 1`, `last_error`, a new `available_at`, or `dead`.
    pub async fn record_failures(&self, failures: &[Failure]) -> Result<u64, StoreError> {
        if failures.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = failures.iter().map(|f| f.id).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let delays: Vec<i64> = failures
            .iter()
            .map(|f| i64::try_from(f.retry_in.as_millis()).unwrap_or(i64::MAX))
            .collect();
        let dead: Vec<bool> = failures.iter().map(|f| f.dead).collect();
        let client = self.within(self.client()).await?;
        let result = self
            .within(async {
                let stmt = client.prepare_cached(&self.sql.record_failures).await?;
                planned(
                    &client,
                    &self.sql.custom_begin,
                    client.execute(&stmt, &[&ids, &errors, &delays, &dead]),
                )
                .await
            })
            .await;
        self.after(client, &result);
        result
    }

    /// Wake-up protocol, step 1: announce "a relay is about to sleep"; from now on producers
    /// NOTIFY.
    pub async fn announce_sleep(&self) -> Result<(), StoreError> {
        self.execute(&self.sql.announce_sleep).await
    }

    /// Runs one parameterless statement within the deadline.
    async fn execute(&self, sql: &str) -> Result<(), StoreError> {
        let client = self.within(self.client()).await?;
        let result = self
            .within(async { Ok(client.execute(sql, &[]).await.map(drop)?) })
            .await;
        self.after(client, &result);
        result
    }

    /// Wake-up protocol, step 2: true when no producer is between its INSERT and its commit,
    /// so none can have missed the announcement without being visible to the next claim.
    pub async fn producers_quiet(&self) -> Result<bool, StoreError> {
        let client = self.within(self.client()).await?;
        let result = self
            .within(async {
                let row = client
                    .query_one(&self.sql.producers_quiet, &[&self.table.regclass()])
                    .await?;
                Ok(row.get(0))
            })
            .await;
        self.after(client, &result);
        result
    }

    /// Wake-up protocol, step 3: "this relay is awake again" (balances `announce_sleep`).
    pub async fn announce_wake(&self) -> Result<(), StoreError> {
        self.execute(&self.sql.announce_wake).await
    }
}

/// Awaits `work` (statements on one pooled connection) within `deadline` (none: as long as it
/// takes); a miss is [`StoreError::Timeout`].
pub async fn within<T>(
    deadline: Option<Duration>,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match deadline {
        Some(deadline) => tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(StoreError::Timeout(deadline))),
        None => work.await,
    }
}

/// After `result` of work on `client` (taken from `pool`): a connection that missed its
/// deadline is taken out of the pool (never reused), and so is every idle one, opened over the
/// same path and as likely to be frozen; the pool opens fresh ones.
pub fn after_deadline<T>(
    pool: &Pool,
    client: deadpool_postgres::Object,
    result: &Result<T, StoreError>,
) {
    if matches!(result, Err(StoreError::Timeout(_))) {
        drop(deadpool_postgres::Object::take(client));
        pool.retain(|_, _| false);
    }
}

/// Runs `statement` in its own transaction opened by `begin` (`BEGIN` plus the pinned planner
/// settings, [`PLAN_SETTINGS`]), in one round trip: tokio-postgres sends `begin`, the
/// statement and `COMMIT` in this order without waiting for each other. If any fails, the
/// statement's result is not used (a failed statement turns the `COMMIT` into a rollback).
pub async fn planned<T>(
    client: &tokio_postgres::Client,
    begin: &str,
    statement: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    let (begun, result, committed) = tokio::join!(
        client.batch_execute(begin),
        statement,
        client.batch_execute("COMMIT"),
    );
    begun?;
    let result = result?;
    committed?;
    Ok(result)
}

/// Subscribes `client` (a dedicated connection) to the table's NOTIFY channel, named after
/// the table: the producers' trigger notifies it while a relay sleeps.
pub async fn listen(client: &tokio_postgres::Client, table: &TableName) -> Result<(), StoreError> {
    client
        .batch_execute(&format!("LISTEN \"{}\"", table.name()))
        .await?;
    Ok(())
}

/// Writes an event through any client or transaction (for applications and tests); returns
/// its id. Use it inside the transaction that makes the business change.
///
/// It calls the table's `<table>_enqueue` SQL function (migration V3), which takes the
/// aggregate's transaction-level advisory lock (`pg_advisory_xact_lock(hashtext(aggregate_id))`)
/// and inserts in one statement: concurrent writers of one aggregate commit in `seq` order, on
/// an autocommit client too. A transaction writing several aggregates must write them in a
/// fixed order (e.g. sorted by `aggregate_id`), or two such transactions can deadlock.
pub async fn enqueue(
    client: &impl GenericClient,
    table: &TableName,
    event: &NewEvent,
) -> Result<Uuid, StoreError> {
    let sql = format!(
        "SELECT {}($1, $2, $3, $4, $5, $6)",
        table.derived("_enqueue")
    );
    let headers = serde_json::Value::Object(
        event
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    );
    let row = client
        .query_one(
            &sql,
            &[
                &event.aggregate_type,
                &event.aggregate_id,
                &event.event_type,
                &event.payload,
                &headers,
                &event.id,
            ],
        )
        .await?;
    Ok(row.try_get(0)?)
}

impl Store {
    /// Verifies that the table and the objects the relay uses exist (fails with
    /// [`StoreError::is_missing_table`] before `outbox-relay migrate` was run).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT 1 FROM {} LIMIT 0; SELECT last_value FROM {}",
            self.table.qualified(),
            self.table.derived("_sleepers")
        );
        let client = self.within(self.client()).await?;
        let result = self
            .within(async { Ok(client.batch_execute(&sql).await?) })
            .await;
        self.after(client, &result);
        result
    }
}
