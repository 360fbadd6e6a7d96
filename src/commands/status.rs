//! `outbox-relay status [--json] [--max-age DURATION]`: the backlog at a glance, and an exit
//! code for cron jobs and probes.

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use super::{CommandError, EXIT_FAILURE, database_error, open_outbox, to_json};
use crate::{
    config::Config,
    ops::{page::age, snapshot::StatusDocument},
    store::status::{self, Status},
};

/// Prints the status; exits 1 when `max_age` is given and the oldest pending event is older.
pub(super) async fn status(
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
        crate::telemetry::out(&status_text(&status));
    }
    if let (Some(max), Some(oldest)) = (max_age, status.backlog.oldest_pending_age_seconds)
        && oldest > max.as_secs_f64()
    {
        crate::telemetry::err(&format!(
            "outbox-relay: oldest pending event is {} old, more than --max-age {}\n",
            age(Some(oldest)),
            humantime::format_duration(max)
        ));
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

/// `outbox-relay status` as text.
fn status_text(status: &Status) -> String {
    let b = &status.backlog;
    let mut out = String::new();
    let _ = writeln!(out, "outbox {}", status.table);
    // Past the status window (`store::status::WINDOW`) a count is an estimate: "~" says so.
    let about = |estimated: bool| if estimated { "~" } else { " " };
    let _ = writeln!(out, "  pending     {}{:>10}", about(b.estimated), b.pending);
    let _ = writeln!(
        out,
        "    retrying   {:>10}   (waiting out a backoff)",
        b.retrying
    );
    let _ = writeln!(
        out,
        "    blocked    {:>10}   (behind an earlier event of their aggregate in backoff)",
        b.blocked
    );
    let _ = writeln!(out, "  dead        {}{:>10}", about(b.estimated), b.dead);
    let _ = writeln!(
        out,
        "  dispatched  {}{:>10}   (retained)",
        about(status.dispatched_estimated),
        status.dispatched
    );
    if b.estimated {
        let _ = writeln!(
            out,
            "  (~: more than {} events pending or dead; counts past the oldest {} are estimated)",
            status::WINDOW,
            status::WINDOW
        );
    }
    let _ = writeln!(
        out,
        "  oldest pending   {}",
        age(b.oldest_pending_age_seconds)
    );
    let _ = writeln!(
        out,
        "  oldest eligible  {}   (due and publishable now; old means the relay is not keeping up)",
        age(b.oldest_eligible_age_seconds)
    );
    if !b.by_aggregate_type.is_empty() {
        let _ = writeln!(out, "\nby aggregate type:");
        let _ = writeln!(
            out,
            "  {:<24} {:>9} {:>9} {:>8} {:>8} {:>15} {:>15}",
            "aggregate_type",
            "pending",
            "retrying",
            "blocked",
            "dead",
            "oldest pending",
            "oldest eligible"
        );
        for (name, t) in &b.by_aggregate_type {
            let _ = writeln!(
                out,
                "  {:<24} {:>9} {:>9} {:>8} {:>8} {:>15} {:>15}",
                name,
                t.pending,
                t.retrying,
                t.blocked,
                t.dead,
                age(t.oldest_pending_age_seconds),
                age(t.oldest_eligible_age_seconds)
            );
        }
    }
    if !status.failures.is_empty() {
        let _ = writeln!(
            out,
            "\nfailure reasons (pending = will be retried, dead = needs a replay):"
        );
        for f in &status.failures {
            let _ = writeln!(out, "  {:>7} {:<8} {}", f.events, f.status, f.reason);
        }
    }
    let _ = writeln!(out, "\nwhat happens next:");
    for line in next_steps(status) {
        let _ = writeln!(out, "  - {line}");
    }
    out
}

/// What the relay (or the operator) will do with the backlog.
fn next_steps(status: &Status) -> Vec<String> {
    let b = &status.backlog;
    let mut lines = Vec::new();
    let eligible = b.pending - b.retrying - b.blocked;
    if eligible > 0 {
        lines.push(format!(
            "{eligible} event(s) are due and publishable now (oldest waiting {})",
            age(b.oldest_eligible_age_seconds)
        ));
    }
    if b.retrying > 0 {
        let next = match (&status.next_retry_at, status.next_retry_in_seconds) {
            (Some(at), Some(secs)) => format!("; next retry in {} ({at})", age(Some(secs))),
            _ => String::new(),
        };
        lines.push(format!(
            "{} event(s) wait out a retry backoff{next}",
            b.retrying
        ));
    }
    if b.blocked > 0 {
        lines.push(format!(
            "{} event(s) wait for an earlier event of the same aggregate to be retried",
            b.blocked
        ));
    }
    if b.dead > 0 {
        lines.push(format!(
            "{} dead event(s) stay dead until replayed: `outbox-relay dead list`, then \
             `outbox-relay replay --id ...` or `--all-dead`",
            b.dead
        ));
    }
    if lines.is_empty() {
        lines.push("nothing to do: no pending or dead events".to_owned());
    }
    lines
}
