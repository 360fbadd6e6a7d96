//! One function per subcommand, one file each: they turn a validated [`Config`] into work
//! and an exit code, and render what they print (text for people, `--json` for scripts)
//! beside themselves. Errors are one line for humans and say what to do next.

mod dead;
mod grants;
mod migrate;
mod purge;
mod replay;
mod run;
mod status;

use std::process::ExitCode;

use crate::{
    cli::{Command, DeadCommand},
    config::{Config, DatabaseUrl, TableName},
    store::{admin::ReplaySelection, connect::Connector},
};

pub use migrate::migrate;
pub use run::run;

/// Exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for usage and configuration errors.
pub const EXIT_USAGE: u8 = 2;

/// A command failure: what to print and which exit code to use.
#[derive(Debug)]
pub struct CommandError {
    /// One line for the operator.
    pub message: String,
    /// The process exit code.
    pub code: u8,
}

impl CommandError {
    /// A runtime failure (exit 1).
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: EXIT_FAILURE,
        }
    }

    /// A usage or configuration error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: EXIT_USAGE,
        }
    }
}

/// Runs `command`; the result becomes the process exit code.
pub async fn dispatch(command: Command, config: Config) -> Result<ExitCode, CommandError> {
    match command {
        Command::Run => Box::pin(run(config)).await,
        Command::Migrate {
            inbox,
            database_url,
        } => {
            let config = with_database_url(config, database_url)?;
            if inbox {
                migrate::migrate_inbox(&config).await
            } else {
                migrate(&config).await
            }
        }
        Command::Config => {
            crate::telemetry::out(&config.redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, max_age } => status::status(&config, json, max_age).await,
        Command::Dead {
            command:
                DeadCommand::List {
                    json,
                    limit,
                    aggregate_type,
                },
        } => dead::list(&config, json, limit, aggregate_type.as_deref()).await,
        Command::Replay {
            id,
            all_dead,
            aggregate_type,
            since,
        } => {
            let selection = if all_dead {
                ReplaySelection::AllDead {
                    aggregate_type,
                    since,
                }
            } else {
                ReplaySelection::Ids(id)
            };
            replay::replay(&config, selection).await
        }
        Command::Purge {
            older_than,
            inbox,
            database_url,
        } => {
            let config = with_database_url(config, database_url)?;
            if inbox {
                purge::purge_inbox(&config, older_than).await
            } else {
                purge::purge(&config, older_than).await
            }
        }
        Command::Grants {
            relay_role,
            producer_role,
        } => grants::grants(&config, relay_role.as_deref(), producer_role.as_deref()),
    }
}

/// `--database-url` overrides `database.url` (validated like it, the error naming the flag).
fn with_database_url(mut config: Config, url: Option<String>) -> Result<Config, CommandError> {
    if let Some(url) = url {
        config.database.url = DatabaseUrl::parse(&url)
            .map_err(|e| CommandError::usage(format!("--database-url: {e}")))?;
    }
    Ok(config)
}

/// Turns a database error into an actionable one-liner.
pub fn database_error(error: &crate::store::StoreError, table: &TableName) -> CommandError {
    if error.is_missing_table() {
        CommandError::failure(format!(
            "the outbox table `{table}` does not exist: run `outbox-relay migrate` first"
        ))
    } else if error.is_connection() {
        CommandError::failure(format!(
            "cannot reach the database ({}); check database.url / OUTBOX_RELAY_DATABASE__URL",
            error_chain(error)
        ))
    } else {
        CommandError::failure(error_chain(error))
    }
}

/// An error and its causes on one line, without repeating a cause its parent already shows
/// (tokio-postgres puts the useful part, e.g. "Connection refused" or the server's message,
/// in the source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = cause.source();
    }
    line
}

/// Opens one dedicated connection for an operator command and names the outbox table.
async fn open_outbox(config: &Config) -> Result<(tokio_postgres::Client, TableName), CommandError> {
    let client = connect(config, "outbox-relay-cli").await?;
    Ok((client, config.database.table.clone()))
}

/// Opens one dedicated connection to `database.url` (as `application_name`) through the
/// connector the daemon uses too ([`Connector::from_config`]).
async fn connect(
    config: &Config,
    application_name: &str,
) -> Result<tokio_postgres::Client, CommandError> {
    let connector = Connector::from_config(&config.database, application_name)
        .map_err(|e| CommandError::usage(e.to_string()))?;
    // Notices are not read: the connection keeps running without a listener. Boxed: the
    // connect future is ~16 KB, too much to carry on every command's stack.
    let (client, _notices) = Box::pin(connector.connect_dedicated())
        .await
        .map_err(|e| unreachable(&e))?;
    Ok(client)
}

/// A failed connection attempt of an operator command (no retries: the operator is there).
pub(crate) fn unreachable(error: &crate::store::connect::ConnectError) -> CommandError {
    CommandError::failure(format!(
        "{error}; check database.url / OUTBOX_RELAY_DATABASE__URL"
    ))
}

/// `--json` output, or a one-line error.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CommandError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CommandError::failure(format!("cannot render JSON: {e}")))
}
