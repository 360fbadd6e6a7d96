//! `outbox-relay migrate`: applies the SQL files in `migrations/` (embedded at build time)
//! for the configured table, idempotently, tracking applied versions with refinery in
//! `<table>_schema_history`. Concurrent runs (several pods starting at once) serialize on an
//! advisory lock. `migrate --inbox` applies `migrations/inbox/` (the consumers' inbox, in the
//! consumer's database) the same way, named after `inbox.table`.

use refinery::{Migration, Runner};
use tokio_postgres::Client;

use super::TableName;

/// The migrations, in order. Their text is written for the default table name
/// `outbox_events` and rendered for the configured one.
/// (V2 is reserved for the privileges migration.)
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "V1__outbox_events",
        include_str!("../../migrations/V1__outbox_events.sql"),
    ),
    (
        "V3__enqueue",
        include_str!("../../migrations/V3__enqueue.sql"),
    ),
];

/// The inbox migrations, written for the default inbox table name `outbox_inbox`.
const INBOX_MIGRATIONS: &[(&str, &str)] = &[(
    "V1__outbox_inbox",
    include_str!("../../migrations/inbox/V1__outbox_inbox.sql"),
)];

/// Advisory lock key serializing concurrent `migrate` runs.
const MIGRATE_LOCK: i64 = 0x6f75_7462_6d69_6772; // "outbmigr"

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A statement failed.
    #[error("database error while migrating: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// refinery refused (divergent or missing versions) or a migration failed.
    #[error("migration failed: {0}")]
    Refinery(#[from] refinery::Error),
}

/// Applies pending migrations; returns the names of those applied now.
pub async fn migrate(client: &mut Client, table: &TableName) -> Result<Vec<String>, MigrateError> {
    apply(client, table, MIGRATIONS, "outbox_events").await
}

/// Applies pending inbox migrations for the inbox table `table`; returns the names of those
/// applied now.
pub async fn migrate_inbox(
    client: &mut Client,
    table: &TableName,
) -> Result<Vec<String>, MigrateError> {
    apply(client, table, INBOX_MIGRATIONS, "outbox_inbox").await
}

/// Applies `migrations` (written for the table name `default`) for `table`.
async fn apply(
    client: &mut Client,
    table: &TableName,
    migrations: &[(&str, &str)],
    default: &str,
) -> Result<Vec<String>, MigrateError> {
    if let Some(schema) = table.schema() {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await?;
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await?;
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    let result = run(client, table, migrations, default).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn run(
    client: &mut Client,
    table: &TableName,
    migrations: &[(&str, &str)],
    default: &str,
) -> Result<Vec<String>, MigrateError> {
    let migrations = migrations
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, &table.render_sql(sql, default)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut runner = Runner::new(&migrations);
    runner.set_migration_table_name(format!("{}_schema_history", table.name()));
    let report = runner.run_async(client).await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
