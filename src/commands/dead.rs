//! `outbox-relay dead list [--json] [--limit N] [--aggregate-type T]`: the dead events, oldest
//! first, with the reason they died.

use std::process::ExitCode;

use super::{CommandError, database_error, open_outbox, to_json};
use crate::{config::Config, ops::render, store::admin};

/// Lists dead events.
pub async fn list(
    config: &Config,
    as_json: bool,
    limit: u32,
    aggregate_type: Option<&str>,
) -> Result<ExitCode, CommandError> {
    let (client, table) = open_outbox(config).await?;
    let events = admin::dead_events(&client, &table, i64::from(limit), aggregate_type)
        .await
        .map_err(|e| database_error(&e, &config.database.table))?;
    if as_json {
        crate::telemetry::out(&format!("{}\n", to_json(&events)?));
    } else {
        crate::telemetry::out(&render::dead_text(&events));
    }
    Ok(ExitCode::SUCCESS)
}
