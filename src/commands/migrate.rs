//! `outbox-relay migrate [--inbox]`.

use std::process::ExitCode;

use super::{CommandError, open_table};
use crate::{
    config::Config,
    store::{TableName, migrate},
};

/// Applies the schema for `database.table`.
pub async fn migrate(config: &Config) -> Result<ExitCode, CommandError> {
    let (mut client, table) = open_table(
        config,
        "database.table",
        &config.database.table,
        "outbox-relay-migrate",
    )
    .await?;
    let applied = migrate::migrate(&mut client, &table).await;
    report(applied, &table)
}

/// Applies the inbox schema for `inbox.table` to the consumer's database (`database.url`).
pub async fn migrate_inbox(config: &Config) -> Result<ExitCode, CommandError> {
    let (mut client, table) = open_table(
        config,
        "inbox.table",
        &config.inbox.table,
        "outbox-relay-migrate",
    )
    .await?;
    let applied = migrate::migrate_inbox(&mut client, &table).await;
    report(applied, &table)
}

/// Prints what was applied (or that nothing was needed).
fn report(
    applied: Result<Vec<String>, migrate::MigrateError>,
    table: &TableName,
) -> Result<ExitCode, CommandError> {
    let applied = applied.map_err(|e| CommandError::failure(e.to_string()))?;
    if applied.is_empty() {
        crate::telemetry::out(&format!("schema for {table} is up to date\n"));
    } else {
        for name in applied {
            crate::telemetry::out(&format!("applied {name} to {table}\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
