//! `outbox-relay grants`: prints the GRANT statements for the configured table. No database
//! connection: the database name comes from `database.url`.

use std::process::ExitCode;

use super::CommandError;
use crate::{
    config::Config,
    store::grants::{self, Roles},
};

/// Prints the grants for the given roles.
pub(super) fn grants(
    config: &Config,
    relay: Option<&str>,
    producer: Option<&str>,
) -> Result<ExitCode, CommandError> {
    for (flag, role) in [("--relay-role", relay), ("--producer-role", producer)] {
        if role.is_some_and(|r| r.trim().is_empty()) {
            return Err(CommandError::usage(format!("{flag} must name a role")));
        }
    }
    let target = config.database.url.target();
    // libpq's default database is the user's name.
    let database = target
        .config
        .get_dbname()
        .or(target.config.get_user())
        .unwrap_or("postgres");
    crate::telemetry::out(&grants::statements(
        &config.database.table,
        database,
        &Roles { relay, producer },
    ));
    Ok(ExitCode::SUCCESS)
}
