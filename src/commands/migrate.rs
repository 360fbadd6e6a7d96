//! `outbox-relay migrate [--inbox]`.

use std::process::ExitCode;

use super::{CommandError, connect};
use crate::{
    config::{Config, TableName},
    store::migrate,
};

/// Applies the schema for `database.table`.
pub async fn migrate(config: &Config) -> Result<ExitCode, CommandError> {
    let mut client = connect(config, "outbox-relay-migrate").await?;
    let table = &config.database.table;
    report(migrate::migrate(&mut client, table).await, table)
}

/// Applies the inbox schema for `inbox.table` to the consumer's database (`database.url`).
pub(super) async fn migrate_inbox(config: &Config) -> Result<ExitCode, CommandError> {
    let mut client = connect(config, "outbox-relay-migrate").await?;
    let table = &config.inbox.table;
    report(migrate::migrate_inbox(&mut client, table).await, table)
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
