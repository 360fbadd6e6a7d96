//! `--retained N[,N...]`: what retained history costs the relay's users. For each N, a
//! database retaining N dispatched rows (dispatched_at = now(), so the default retention
//! keeps them all; VACUUM ANALYZE, autovacuum off on the table, nothing pending) and, beside
//! it, an empty one (fresh, migrated, never analyzed):
//!
//! - the idle relay's CPU on each: Postgres (the relay's sessions, and every `postgres`
//!   process) and the relay itself, as % of a core ([`idle`]);
//! - then the same pending backlog written to each (not analyzed after) and drained by the
//!   relay: on the retained table that is the quiet-analyzed shape with N quiet rows.

use std::time::{Duration, Instant};

use outbox_relay::config::{MetricsConfig, RelayConfig, RetentionConfig};

use crate::{
    args::Args,
    drain::{Drain, drain_db},
    fixtures::{Backlog, TableShape, checkpoint, connect, drop_db, fresh_db, prefill, retain},
    idle::{Idle, idle_cost},
    report::{describe_setup, thousands, verdict},
};

/// Target: the idle relay's sessions cost the database at most this much of a core.
const IDLE_TARGET_PERCENT: f64 = 2.0;

/// Target: the drain on the retained table, against the empty one.
const DRAIN_TARGET: f64 = 0.85;

/// `--retained`: each N of the list in turn.
pub async fn retained(a: &Args) {
    let list: Vec<String> = a.retained.iter().map(|&n| thousands(n as f64)).collect();
    println!(
        "outbox-relay benchmark, retained history: {} dispatched rows; idle {} s; drain {} events over {} aggregates",
        list.join(" and "),
        a.idle_seconds,
        thousands(a.retained_drain_events as f64),
        thousands(a.aggregates as f64)
    );
    describe_setup(
        a,
        "retained: N dispatched rows, VACUUM ANALYZE, autovacuum off on the table, then the backlog (not analyzed); empty: migrated, never analyzed",
    )
    .await;
    let (relay, metrics, retention) = (
        RelayConfig::default(),
        MetricsConfig::default(),
        RetentionConfig::default(),
    );
    println!(
        "idle relay: default config (fallback poll every {:?}, gauges and status page every {:?}, retention purge every {:?}, rebalance every {:?}){}",
        relay.poll_interval,
        metrics.refresh_interval,
        retention.interval,
        relay.rebalance_interval,
        if Duration::from_secs(a.idle_seconds) < retention.interval {
            "; the window is shorter than the purge interval: a purge may fall outside it"
        } else {
            ""
        }
    );
    for &n in &a.retained {
        println!();
        retained_run(a, n).await;
    }
}

/// One N: prefill, the idle relay on the empty and the retained table, the drains.
async fn retained_run(a: &Args, n: usize) {
    let (name, url) = fresh_db().await;
    let client = connect(&url).await;
    let started = Instant::now();
    retain(&client, n, a.aggregates, a.payload_bytes).await;
    checkpoint(&client).await;
    let prefill_secs = started.elapsed().as_secs_f64();
    let bytes: i64 = client
        .query_one("SELECT pg_total_relation_size('outbox_events')", &[])
        .await
        .unwrap()
        .get(0);
    drop(client);
    println!(
        "retained {} dispatched rows: prefill {prefill_secs:.1} s (INSERT ... SELECT in chunks, VACUUM ANALYZE, CHECKPOINT); table and indexes {} MB",
        thousands(n as f64),
        thousands(bytes as f64 / 1_048_576.0)
    );
    let (empty_name, empty_url) = fresh_db().await;
    let retained_label = format!("{} retained", thousands(n as f64));

    let idle_empty = idle_cost(&empty_name, &empty_url, a.batch_size, a.idle_seconds).await;
    let idle_retained = idle_cost(&name, &url, a.batch_size, a.idle_seconds).await;
    println!(
        "  {:<44} {:>16} {:>13} {:>8}",
        format!(
            "idle relay, {} s after start-up (% of a core)",
            a.idle_seconds
        ),
        "its backends",
        "all postgres",
        "relay"
    );
    print_idle("empty table", &idle_empty, None);
    print_idle(
        &retained_label,
        &idle_retained,
        Some(idle_retained.backends <= IDLE_TARGET_PERCENT),
    );

    let events = a.retained_drain_events;
    let backlog = Backlog {
        shape: TableShape::Unanalyzed,
        ..a.backlog(events, a.aggregates)
    };
    let timeout = Duration::from_secs(a.drain_timeout);
    prefill(&empty_url, backlog).await;
    let empty = drain_db(&empty_url, events, a.batch_size, a.replicas, timeout).await;
    prefill(&url, backlog).await;
    let full = drain_db(&url, events, a.batch_size, a.replicas, timeout).await;
    println!(
        "  {:<44} {:>16} {:>13} {:>8}",
        format!(
            "drain {} pending (not analyzed after)",
            thousands(events as f64)
        ),
        "events/s",
        "start s",
        "RSS MB"
    );
    print_drain("empty table, never analyzed", &empty, events, None);
    let ratio = full.rate / empty.rate;
    print_drain(
        &format!("{retained_label}, analyzed while quiet"),
        &full,
        events,
        Some(ratio),
    );
    drop_db(&empty_name).await;
    drop_db(&name).await;
}

fn print_idle(label: &str, idle: &Idle, target_met: Option<bool>) {
    println!(
        "  {label:<44} {:>16} {:>13.2} {:>8.2}{}",
        format!("{:.2} ({} pids)", idle.backends, idle.backend_count),
        idle.all_postgres,
        idle.relay,
        target_met.map_or(String::new(), |ok| format!(
            "   its backends: target <= {IDLE_TARGET_PERCENT} %: {}",
            verdict(ok)
        ))
    );
}

fn print_drain(label: &str, d: &Drain, events: usize, ratio: Option<f64>) {
    println!(
        "  {label:<44} {:>16} {:>13.2} {:>8.1}{}{}",
        thousands(d.rate),
        d.startup_secs,
        d.rss_mb,
        ratio.map_or(String::new(), |r| format!(
            "   {r:.2} x empty (target >= {DRAIN_TARGET}: {})",
            verdict(r >= DRAIN_TARGET)
        )),
        d.note(events)
    );
}
