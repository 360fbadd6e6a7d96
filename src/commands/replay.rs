//! `outbox-relay replay (--id UUID ... | --all-dead [--aggregate-type T] [--since TIME])`:
//! dead events back to pending, on purpose. Never automatic.

use std::process::ExitCode;

use super::{CommandError, database_error, open_outbox};
use crate::{
    config::Config,
    store::admin::{self, ReplaySelection},
};

/// Replays the selected dead events; logs each one and prints how many.
pub(super) async fn replay(
    config: &Config,
    selection: ReplaySelection,
) -> Result<ExitCode, CommandError> {
    let (client, table) = open_outbox(config).await?;
    let replayed = admin::replay(&client, &table, &selection)
        .await
        .map_err(|e| database_error(&e, &config.database.table))?;
    for event in &replayed {
        tracing::info!(
            event_id = %event.id,
            aggregate_type = %event.aggregate_type,
            aggregate_id = %event.aggregate_id,
            attempt = 0,
            reason = "replay",
            "dead event replayed: pending again, attempts reset"
        );
    }
    if let ReplaySelection::Ids(ids) = &selection
        && replayed.len() < ids.len()
    {
        crate::telemetry::err(&format!(
            "outbox-relay: {} of the given IDs are not dead events (unknown, pending or \
             dispatched); left alone\n",
            ids.len() - replayed.len()
        ));
    }
    crate::telemetry::out(&format!("replayed {} event(s)\n", replayed.len()));
    Ok(ExitCode::SUCCESS)
}
