//! The status page (`GET /` on the ops port): the [`StatusDocument`] as one self-contained
//! HTML page (inline CSS, no script, no external assets) that reloads itself. Every value
//! from the table or a connection error is escaped, so an aggregate type or an error text
//! containing markup shows as text.

use std::fmt::Write as _;

use super::snapshot::StatusDocument;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.5em}\
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;\
text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.up{color:#1a7f37;font-weight:bold}.down{color:#cf222e;font-weight:bold}\
.muted{color:#666}code{font-size:.95em}";

/// The page; it asks the browser to reload it every `refresh_seconds`.
pub fn render(doc: &StatusDocument, refresh_seconds: u64) -> String {
    let s = &doc.status;
    let b = &s.backlog;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{refresh_seconds}\">\
         <title>outbox-relay: {table}</title><style>{STYLE}</style></head><body>\
         <h1>outbox-relay <span id=\"version\">{version}</span> &middot; \
         <code id=\"table\">{table}</code></h1>\
         <p class=\"muted\">Figures as of <span id=\"read-at\">{read_at}</span>.</p>",
        table = escape(&s.table),
        version = escape(&doc.version),
        read_at = escape(&doc.read_at),
    );
    out.push_str("<table id=\"summary\">");
    let rows = [
        ("pending", "pending events", b.pending.to_string()),
        (
            "retrying",
            "retrying (waiting out a backoff)",
            b.retrying.to_string(),
        ),
        (
            "blocked",
            "blocked (behind a retrying event)",
            b.blocked.to_string(),
        ),
        ("dead", "dead events", b.dead.to_string()),
        (
            "oldest-pending",
            "oldest pending",
            age(b.oldest_pending_age_seconds),
        ),
        (
            "oldest-eligible",
            "oldest eligible (old: the relay is not keeping up)",
            age(b.oldest_eligible_age_seconds),
        ),
    ];
    for (id, label, value) in rows {
        row(&mut out, id, label, &escape(&value));
    }
    if let Some(relay) = &doc.relay {
        let drain = match relay.time_to_drain_seconds {
            Some(seconds) => age(Some(seconds)),
            None => "never at the current rate (nothing is being published)".to_owned(),
        };
        row(
            &mut out,
            "publish-rate",
            "publish rate (this replica, last minute)",
            &format!("{:.1} events/s", relay.publish_rate_per_second),
        );
        row(&mut out, "time-to-drain", "time to drain", &escape(&drain));
        row(
            &mut out,
            "buckets",
            "buckets owned by this replica",
            &format!(
                "{} of {} (live relays: {})",
                relay.owned_buckets, relay.buckets, relay.relays
            ),
        );
        row(&mut out, "database", "database", &state(relay.database_up));
        row(&mut out, "broker", "broker", &state(relay.broker_up));
        if let Some(reason) = &relay.not_ready {
            row(&mut out, "not-ready", "not ready", &escape(reason));
        }
    }
    out.push_str("</table>");
    by_type(&mut out, doc);
    failures(&mut out, doc);
    latest_dead(&mut out, doc);
    let _ = write!(
        out,
        "<p class=\"muted\">Refreshed by the relay every few seconds; this page reloads every \
         {refresh_seconds} s. The same document as JSON: <a href=\"status.json\">status.json</a>.\
         </p></body></html>"
    );
    out
}

fn row(out: &mut String, id: &str, label: &str, escaped_value: &str) {
    let _ = write!(
        out,
        "<tr><th>{label}</th><td id=\"{id}\" class=\"n\">{escaped_value}</td></tr>"
    );
}

fn state(up: bool) -> String {
    if up {
        "<span class=\"up\">up</span>".to_owned()
    } else {
        "<span class=\"down\">down</span>".to_owned()
    }
}

fn by_type(out: &mut String, doc: &StatusDocument) {
    let types = &doc.status.backlog.by_aggregate_type;
    out.push_str("<h2>By aggregate type</h2>");
    if types.is_empty() {
        out.push_str("<p id=\"by-type\" class=\"muted\">Nothing pending or dead.</p>");
        return;
    }
    out.push_str(
        "<table id=\"by-type\"><tr><th>aggregate type</th><th>pending</th><th>dead</th>\
         <th>oldest pending</th><th>oldest eligible</th></tr>",
    );
    for (name, t) in types {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(name),
            t.pending,
            t.dead,
            escape(&age(t.oldest_pending_age_seconds)),
            escape(&age(t.oldest_eligible_age_seconds)),
        );
    }
    out.push_str("</table>");
}

fn failures(out: &mut String, doc: &StatusDocument) {
    if doc.status.failures.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Failure reasons</h2><table id=\"failures\">\
         <tr><th>status</th><th>events</th><th>reason</th></tr>",
    );
    for f in &doc.status.failures {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&f.status),
            f.events,
            escape(&f.reason)
        );
    }
    out.push_str("</table>");
}

fn latest_dead(out: &mut String, doc: &StatusDocument) {
    let Some(dead) = &doc.latest_dead else {
        return;
    };
    out.push_str("<h2>Latest dead events</h2>");
    if dead.is_empty() {
        out.push_str("<p id=\"latest-dead\" class=\"muted\">None.</p>");
        return;
    }
    out.push_str(
        "<table id=\"latest-dead\"><tr><th>id</th><th>aggregate type</th><th>event type</th>\
         <th>attempts</th><th>last error</th></tr>",
    );
    for e in dead {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td>{}</td></tr>",
            e.id,
            escape(&e.aggregate_type),
            escape(&e.event_type),
            e.attempts,
            escape(e.last_error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        admin::DeadEvent,
        status::{FailureReason, Status, TypeBacklog},
    };

    fn document() -> StatusDocument {
        let mut status = Status {
            table: "outbox_events".into(),
            ..Status::default()
        };
        status.backlog.pending = 3;
        status.backlog.by_aggregate_type.insert(
            "<script>alert(1)</script>".into(),
            TypeBacklog {
                pending: 3,
                ..TypeBacklog::default()
            },
        );
        status.failures.push(FailureReason {
            status: "dead".into(),
            reason: "rejected: <b>bad</b> & \"worse\"".into(),
            events: 1,
        });
        StatusDocument::of(status)
    }

    #[test]
    fn values_are_escaped() {
        let html = render(&document(), 5);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("rejected: &lt;b&gt;bad&lt;/b&gt; &amp; &quot;worse&quot;"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    }

    #[test]
    fn dead_events_appear_only_in_details() {
        let mut doc = document();
        assert!(!render(&doc, 5).contains("Latest dead events"));
        doc.latest_dead = Some(vec![DeadEvent {
            id: uuid::Uuid::nil(),
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "created".into(),
            attempts: 2,
            last_error: Some("unroutable: <x>".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
        }]);
        let html = render(&doc, 5);
        assert!(html.contains("Latest dead events"), "{html}");
        assert!(html.contains("unroutable: &lt;x&gt;"), "{html}");
    }
}
