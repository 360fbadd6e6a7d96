//! `outbox-relay migrate`: applies the SQL files in `migrations/` (embedded at build time)
//! for the configured table, idempotently, tracking applied versions with refinery in
//! `<table>_schema_history`. Concurrent runs (several pods starting at once) serialize on an
//! advisory lock. `migrate --inbox` applies `migrations/inbox/` (the consumers' inbox, in the
//! consumer's database) the same way, named after `inbox.table`.

use refinery::{Migration, Runner};
use tokio_postgres::Client;

use crate::config::TableName;

/// The migrations, in order. Their text is written for the default table name
/// `outbox_events` and rendered for the configured one.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "V1__outbox_events",
        include_str!("../../migrations/V1__outbox_events.sql"),
    ),
    (
        "V2__producer_privileges",
        include_str!("../../migrations/V2__producer_privileges.sql"),
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

/// The version number of a migration named `V<n>__...`.
fn number(name: &str) -> u32 {
    name.trim_start_matches('V')
        .split("__")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX)
}

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
    /// The table exists and the connected role cannot act as its owner.
    #[error(
        "role \"{role}\" cannot migrate {table}: migrations alter the table, its indexes and \
         functions, which needs the owning role \"{owner}\" (or a member of it); run migrate as \
         that role. The relay's runtime role needs only what `outbox-relay grants` prints"
    )]
    NotOwner {
        /// The connected role.
        role: String,
        /// The table.
        table: String,
        /// Its owner.
        owner: String,
    },
    /// The table does not exist yet and the connected role may not create it.
    #[error(
        "role \"{role}\" cannot create {table}: it lacks the CREATE privilege on schema \
         \"{schema}\"; run migrate as the role that is to own the outbox table"
    )]
    CannotCreate {
        /// The connected role.
        role: String,
        /// The table.
        table: String,
        /// The schema it would be created in.
        schema: String,
    },
}

/// Refuses early, in one line, when the connected role cannot migrate: the table exists and
/// the role is not (a member of) its owner, or it does not and the role may not create it.
/// Without this the first failing DDL statement would speak instead, in refinery's words.
async fn check_privileges(client: &Client, table: &TableName) -> Result<(), MigrateError> {
    let row = client
        .query_one(
            "SELECT current_user::text, \
                    c.relowner::regrole::text, \
                    COALESCE(pg_has_role(current_user, c.relowner, 'USAGE'), false), \
                    current_schema()::text, \
                    COALESCE(has_schema_privilege(current_user, current_schema(), 'CREATE'), false) \
             FROM (SELECT 1) one \
             LEFT JOIN pg_class c ON c.oid = to_regclass($1)",
            &[&table.regclass()],
        )
        .await?;
    let role: String = row.get(0);
    let owner: Option<String> = row.get(1);
    let acts_as_owner: bool = row.get(2);
    let schema: Option<String> = row.get(3);
    let may_create: bool = row.get(4);
    match owner {
        Some(owner) if !acts_as_owner => Err(MigrateError::NotOwner {
            role,
            table: table.to_string(),
            owner,
        }),
        None if !may_create => Err(MigrateError::CannotCreate {
            role,
            table: table.to_string(),
            schema: schema.unwrap_or_else(|| "(none on the search_path)".into()),
        }),
        _ => Ok(()),
    }
}

/// Applies pending migrations; returns the names of those applied now.
pub async fn migrate(client: &mut Client, table: &TableName) -> Result<Vec<String>, MigrateError> {
    migrate_until(client, table, u32::MAX).await
}

/// Applies pending migrations up to and including `version` (upgrade tests start from an
/// older schema with it); returns the names of those applied now.
pub async fn migrate_until(
    client: &mut Client,
    table: &TableName,
    version: u32,
) -> Result<Vec<String>, MigrateError> {
    let wanted: Vec<(&str, &str)> = MIGRATIONS
        .iter()
        .copied()
        .take_while(|(name, _)| number(name) <= version)
        .collect();
    apply(client, table, &wanted, "outbox_events").await
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
        // Only when missing: CREATE SCHEMA checks the database's CREATE privilege even with
        // IF NOT EXISTS, which would hide the clearer message of `check_privileges`.
        let exists = client
            .query_one("SELECT to_regnamespace($1) IS NOT NULL", &[&schema])
            .await?
            .get::<_, bool>(0);
        if !exists {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .await?;
        }
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await?;
    }
    check_privileges(client, table).await?;
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
