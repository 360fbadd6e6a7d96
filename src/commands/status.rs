//! `outbox-relay status [--json] [--max-age DURATION]`: the backlog at a glance, and an exit
//! code for cron jobs and probes.

use std::{process::ExitCode, time::Duration};

use super::{CommandError, EXIT_FAILURE, database_error, open_outbox, to_json};
use crate::{
    config::Config,
    ops::{render, snapshot::StatusDocument},
    store::status,
};

/// Prints the status; exits 1 when `max_age` is given and the oldest pending event is older.
pub async fn status(
    config: &Config,
    as_json: bool,
    max_age: Option<Duration>,
) -> Result<ExitCode, CommandError> {
    let (client, table) = open_outbox(config).await?;
    let status = status::status(&client, &table)
        .await
        .map_err(|e| database_error(&e, &config.database.table))?;
    if as_json {
        let document = StatusDocument::of(status.clone());
        crate::telemetry::out(&format!("{}\n", to_json(&document)?));
    } else {
        crate::telemetry::out(&render::status_text(&status));
    }
    if let (Some(max), Some(oldest)) = (max_age, status.backlog.oldest_pending_age_seconds)
        && oldest > max.as_secs_f64()
    {
        crate::telemetry::err(&format!(
            "outbox-relay: oldest pending event is {} old, more than --max-age {}\n",
            render::age(Some(oldest)),
            humantime::format_duration(max)
        ));
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}
