//! Printing: number formatting, the verdicts against targets, and the lines describing what
//! a run is measured under.

use crate::{
    args::Args,
    fixtures::{connect, pg_server},
    limits::BrokerRun,
};

/// `12345.6` as "12,346".
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// A target's verdict.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

/// What this run is measured under: cores, the table (`table`, e.g. the table shape's
/// description), the server's autovacuum, relay overrides.
pub async fn describe_setup(a: &Args, table: &str) {
    let autovacuum: String = connect(&format!("{}/postgres", pg_server()))
        .await
        .query_one("SHOW autovacuum", &[])
        .await
        .unwrap()
        .get(0);
    let overrides: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OUTBOX_RELAY_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "{} cores; {} B payload, batch {}, {} replica(s); table {}; server autovacuum {autovacuum}; relay overrides: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        a.payload_bytes,
        a.batch_size,
        a.replicas,
        table,
        if overrides.is_empty() {
            "none".into()
        } else {
            overrides.join(" ")
        }
    );
}

/// The round trips printed as "1: 0.54 ms (p99 1.88; 1,800 msg/s) | 10: ...".
pub fn describe_rtts(rtts: &[(usize, BrokerRun)]) -> String {
    rtts.iter()
        .map(|(w, r)| {
            format!(
                "{w}: {:.2} ms (p99 {:.2}; {} msg/s)",
                r.rtt_p50_ms,
                r.rtt_p99_ms,
                thousands(r.rate)
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}
