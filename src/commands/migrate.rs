//! `outbox-relay migrate`.

use std::process::ExitCode;

use super::CommandError;
use crate::{
    config::Config,
    store::{TableName, connect::Connector, migrate},
};

/// Applies the schema for `database.table`.
pub async fn migrate(config: &Config) -> Result<ExitCode, CommandError> {
    let table = TableName::parse(&config.database.table)
        .map_err(|e| CommandError::usage(format!("config key `database.table`: {e}")))?;
    let connector = Connector::new(
        &config.database.url,
        config.database.ca_file.as_deref(),
        "outbox-relay-migrate",
        config.database.connect_timeout,
    )
    .map_err(|e| CommandError::usage(format!("config key `database.url`: {e}")))?
    .with_password_file(config.database.password_file.as_deref())
    .map_err(|e| CommandError::usage(e.to_string()))?;
    let (mut client, _messages) = connector
        .connect_dedicated()
        .await
        .map_err(|e| super::unreachable(&e))?;
    let applied = migrate::migrate(&mut client, &table)
        .await
        .map_err(|e| CommandError::failure(e.to_string()))?;
    if applied.is_empty() {
        crate::telemetry::out(&format!("schema for {table} is up to date\n"));
    } else {
        for name in applied {
            crate::telemetry::out(&format!("applied {name} to {table}\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
