//! `outbox-relay dead list [--json] [--limit N] [--aggregate-type T]`: the dead events, oldest
//! first, with the reason they died.

use std::{fmt::Write as _, process::ExitCode};

use super::{CommandError, database_error, open_outbox, to_json};
use crate::{
    config::Config,
    store::admin::{self, DeadEvent},
};

/// Lists dead events.
pub(super) async fn list(
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
        crate::telemetry::out(&dead_text(&events));
    }
    Ok(ExitCode::SUCCESS)
}

/// `outbox-relay dead list` as text.
fn dead_text(events: &[DeadEvent]) -> String {
    if events.is_empty() {
        return "no dead events\n".to_owned();
    }
    let mut out = String::new();
    for e in events {
        let _ = writeln!(
            out,
            "{}  {}/{}  {}  attempts={}  created={}\n    {}",
            e.id,
            e.aggregate_type,
            e.aggregate_id,
            e.event_type,
            e.attempts,
            e.created_at,
            e.last_error.as_deref().unwrap_or("-")
        );
    }
    out
}
