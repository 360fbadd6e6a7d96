//! `outbox-relay purge --older-than DURATION`: deletes dispatched rows older than the
//! duration, in batches of `retention.batch_size` (what the background retention does, on
//! demand). Pending and dead rows are never touched.

use std::{process::ExitCode, time::Duration};

use super::{CommandError, database_error, open_outbox};
use crate::{config::Config, store::retention};

/// Purges and prints how many rows were deleted.
pub async fn purge(config: &Config, older_than: Duration) -> Result<ExitCode, CommandError> {
    let (client, table) = open_outbox(config).await?;
    let batch = i64::try_from(config.retention.batch_size).unwrap_or(i64::MAX);
    let deleted = retention::purge(&client, &table, older_than, batch, |_| {})
        .await
        .map_err(|e| database_error(&e, &config.database.table))?;
    crate::telemetry::out(&format!(
        "purged {deleted} dispatched event(s) older than {}\n",
        humantime::format_duration(older_than)
    ));
    Ok(ExitCode::SUCCESS)
}
