//! Rendering for the operator commands: a human-readable text form (JSON for scripts is the
//! serde form of the same structs, see [`json`]).

use std::fmt::Write as _;

use serde::Serialize;

use crate::store::{admin::DeadEvent, status::Status};

/// Pretty JSON for `--json` output.
pub fn json<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(value)
}

/// Seconds as a short human duration (`3m 12s`), `<1s` below a second, `-` for none.
pub fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) => {
            let d = std::time::Duration::from_secs(s.max(0.0).round() as u64);
            if d.is_zero() {
                "<1s".to_owned()
            } else {
                humantime::format_duration(d).to_string()
            }
        }
    }
}

/// `outbox-relay status` as text.
pub fn status_text(status: &Status) -> String {
    let b = &status.backlog;
    let mut out = String::new();
    let _ = writeln!(out, "outbox {}", status.table);
    let _ = writeln!(out, "  pending      {:>10}", b.pending);
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
    let _ = writeln!(out, "  dead         {:>10}", b.dead);
    let _ = writeln!(out, "  dispatched   {:>10}   (retained)", status.dispatched);
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

/// `outbox-relay dead list` as text.
pub fn dead_text(events: &[DeadEvent]) -> String {
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
