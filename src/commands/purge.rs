//! `outbox-relay purge --older-than DURATION`: deletes dispatched rows older than the
//! duration, in batches of `retention.batch_size` (what the background retention does, on
//! demand). Pending and dead rows are never touched. `--inbox` purges the consumers' inbox
//! table (`inbox.table`) by `received_at` instead.

use std::{process::ExitCode, time::Duration};

use super::{CommandError, connect, database_error, open_outbox};
use crate::{config::Config, inbox, store::retention};

/// Purges and prints how many rows were deleted.
pub(super) async fn purge(config: &Config, older_than: Duration) -> Result<ExitCode, CommandError> {
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

/// Purges inbox rows received longer than `older_than` ago and prints how many.
pub(super) async fn purge_inbox(
    config: &Config,
    older_than: Duration,
) -> Result<ExitCode, CommandError> {
    let client = connect(config, "outbox-relay-cli").await?;
    let table = &config.inbox.table;
    let batch = i64::try_from(config.retention.batch_size).unwrap_or(i64::MAX);
    let deleted = inbox::purge(&client, table, older_than, batch)
        .await
        .map_err(|e| {
            if e.is_missing_table() {
                CommandError::failure(format!(
                    "the inbox table `{table}` does not exist: run `outbox-relay migrate --inbox` \
                     against the consumer's database first"
                ))
            } else {
                database_error(&e, table)
            }
        })?;
    crate::telemetry::out(&format!(
        "purged {deleted} inbox row(s) older than {}\n",
        humantime::format_duration(older_than)
    ));
    Ok(ExitCode::SUCCESS)
}
