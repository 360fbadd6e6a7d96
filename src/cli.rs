//! Command-line definitions (clap). The subcommands and flags are a contract users script
//! against: add to them, never rename.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use clap::{ArgGroup, Parser, Subcommand};
use uuid::Uuid;

/// Transactional outbox relay: Postgres `outbox_events` to RabbitMQ or SQS.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about)]
pub struct Cli {
    /// TOML configuration file (keys can be overridden by `OUTBOX_RELAY_<SECTION>__<KEY>`).
    #[arg(
        long,
        global = true,
        env = "OUTBOX_RELAY_CONFIG",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay until SIGTERM/SIGINT.
    Run,
    /// Create or upgrade the outbox schema (idempotent).
    Migrate {
        /// Create or upgrade the consumers' inbox table (`inbox.table`) instead, in the
        /// consumer's database (`database.url` or `--database-url`).
        #[arg(long)]
        inbox: bool,
        /// Use this database instead of `database.url`.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Print the effective configuration with secrets redacted.
    Config,
    /// Show the backlog: pending, dead, dispatched, oldest ages, failure reasons.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Exit 1 when the oldest pending event is older than this (e.g. `5m`).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
    },
    /// Inspect dead events.
    Dead {
        /// What to do with dead events.
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Move dead events back to pending (attempts reset). Never automatic.
    #[command(group(ArgGroup::new("selection").required(true).args(["id", "all_dead"])))]
    Replay {
        /// Replay these event IDs (repeatable).
        #[arg(long = "id", value_name = "UUID", num_args = 1..)]
        id: Vec<Uuid>,
        /// Replay every dead event (optionally filtered).
        #[arg(long)]
        all_dead: bool,
        /// With --all-dead: only this aggregate type.
        #[arg(long, value_name = "TYPE", conflicts_with = "id")]
        aggregate_type: Option<String>,
        /// With --all-dead: only events created since TIME (RFC 3339, e.g.
        /// `2026-11-24T10:00:00Z`, or a duration ago, e.g. `2h`).
        #[arg(long, value_name = "TIME", conflicts_with = "id", value_parser = parse_since)]
        since: Option<SystemTime>,
    },
    /// Print the GRANT statements the relay's runtime role and the producers' role need on
    /// the configured table (run them as the table's owner).
    #[command(group(ArgGroup::new("roles").required(true).multiple(true).args(["relay_role", "producer_role"])))]
    Grants {
        /// The role the relay runs as (run, status, dead list, replay, purge).
        #[arg(long, value_name = "ROLE")]
        relay_role: Option<String>,
        /// The role applications write events with (INSERT only).
        #[arg(long, value_name = "ROLE")]
        producer_role: Option<String>,
    },
    /// Delete dispatched rows older than a duration, in batches.
    Purge {
        /// e.g. `7days`, `12h`.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Delete inbox rows (`inbox.table`, every consumer's) received longer ago instead:
        /// the dedupe window, which must outlast the broker's longest redelivery.
        #[arg(long)]
        inbox: bool,
        /// Use this database instead of `database.url`.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
}

/// `outbox-relay dead ...`
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead events, oldest first.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only this aggregate type.
        #[arg(long, value_name = "TYPE")]
        aggregate_type: Option<String>,
    },
}

/// `--since`: an RFC 3339 timestamp, or a duration meaning "that long ago".
fn parse_since(raw: &str) -> Result<SystemTime, String> {
    if let Some(time) = parse_timestamp(raw) {
        return Ok(time);
    }
    let ago = humantime::parse_duration(raw)
        .map_err(|_| format!("`{raw}` is neither an RFC 3339 time nor a duration like `2h`"))?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("`{raw}` is too far in the past"))
}

/// An RFC 3339 timestamp ending in `Z`, a numeric offset (`+01:00`), or nothing (UTC).
fn parse_timestamp(raw: &str) -> Option<SystemTime> {
    if let Ok(time) = humantime::parse_rfc3339_weak(raw) {
        return Some(time);
    }
    // humantime only knows `Z`: apply a `+HH:MM` / `-HH:MM` offset here.
    let split = raw.len().checked_sub(6)?;
    let (wall, offset) = (raw.get(..split)?, raw.get(split..)?);
    let (east, hhmm) = match (offset.strip_prefix('+'), offset.strip_prefix('-')) {
        (Some(hhmm), _) => (true, hhmm),
        (_, Some(hhmm)) => (false, hhmm),
        _ => return None,
    };
    let (hours, minutes) = hhmm.split_once(':')?;
    let shift =
        Duration::from_secs(hours.parse::<u64>().ok()? * 3600 + minutes.parse::<u64>().ok()? * 60);
    let as_if_utc = humantime::parse_rfc3339_weak(wall).ok()?;
    if east {
        as_if_utc.checked_sub(shift)
    } else {
        as_if_utc.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_rfc3339_with_offsets_and_durations_ago() {
        let utc = parse_since("2026-11-24T10:00:00Z").unwrap();
        assert_eq!(parse_since("2026-11-24T11:30:00+01:30").unwrap(), utc);
        assert_eq!(parse_since("2026-11-24T05:00:00-05:00").unwrap(), utc);
        assert_eq!(parse_since("2026-11-24 10:00:00").unwrap(), utc);
        let since = parse_since("2h").unwrap();
        let ago = SystemTime::now().duration_since(since).unwrap();
        assert!(ago >= Duration::from_secs(7200), "{ago:?}");
        for bad in [
            "yesterday",
            "2026-11-24T10:00:00+1:00",
            "2026-11-24T10:00:00*01:00",
            "é",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
