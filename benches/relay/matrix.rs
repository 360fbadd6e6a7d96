//! `--matrix`: the raw broker limit and the confirm round trips once, then the relay drain
//! over backlogs and aggregate counts, printed as one table against them; its last two rows
//! drain the small and the large backlog on a table analyzed while quiet.

use std::time::Duration;

use crate::{
    args::Args,
    drain::relay_drain,
    fixtures::{Backlog, TableShape},
    limits::{BrokerRun, RAW_WINDOW, order_bound, raw_broker_limits, raw_combined, round_trip},
    report::{describe_rtts, describe_setup, thousands, verdict},
};

/// `--matrix`: the raw broker limit and the confirm round trips once, then the relay drain
/// over backlogs and aggregate counts, each in a fresh database and queue, the last two on
/// a table analyzed while quiet.
pub async fn matrix(a: &Args) {
    let scaled = |n: usize| ((n as f64 * a.matrix_scale).round() as usize).max(1);
    let (small, large) = (scaled(50_000), scaled(500_000));
    let backlog = |events, aggregates| a.backlog(events, aggregates);
    let timeout = Duration::from_secs(a.drain_timeout);
    println!(
        "outbox-relay benchmark matrix: backlogs {} and {} (scale {})",
        thousands(small as f64),
        thousands(large as f64),
        a.matrix_scale
    );
    describe_setup(
        a,
        &format!(
            "{}; the last two rows' table {}",
            a.shape().describe(a.quiet_rows),
            TableShape::QuietAnalyzed.describe(a.quiet_rows)
        ),
    )
    .await;
    let mut rtts: Vec<(usize, BrokerRun)> = Vec::new();
    let (raw, minimal) = if a.skip_broker {
        (BrokerRun::SKIPPED, BrokerRun::SKIPPED)
    } else {
        let (raw, minimal) = raw_broker_limits(small.max(10_000), a.payload_bytes).await;
        for w in [1, 10, 100, RAW_WINDOW] {
            rtts.push((w, round_trip(w, a.payload_bytes).await));
        }
        (raw, minimal)
    };
    let both = if a.skip_broker || a.skip_store {
        f64::NAN
    } else {
        raw_combined(backlog(small, 1_000), a.batch_size).await
    };
    // The same at the large backlog: the broker's queue grows to the backlog's size (nothing
    // consumes it in the benchmark), which slows the broker itself.
    let both_large = if a.skip_broker || a.skip_store {
        f64::NAN
    } else {
        raw_combined(backlog(large, 1_000), a.batch_size).await
    };
    println!(
        "raw broker (lapin, {RAW_WINDOW} outstanding confirms, no Postgres, the relay's message properties): {} msg/s",
        thousands(raw.rate)
    );
    println!(
        "  (same with only delivery_mode and message_id: {} msg/s; \"x raw\" below is against the first)",
        thousands(minimal.rate)
    );
    println!(
        "raw broker and store together (read in seq order, publish, mark; no relay, no ordering): {} events/s (\"x both\" below)",
        thousands(both)
    );
    if !rtts.is_empty() {
        println!(
            "confirm round trip (publish call to confirm), p50 by confirms outstanding: {}",
            describe_rtts(&rtts)
        );
    }
    let rtt_at = |w: usize| {
        rtts.iter()
            .find(|(x, _)| *x == w)
            .map_or(BrokerRun::SKIPPED, |(_, r)| *r)
    };
    println!();
    println!(
        "{:>9} {:>10} {:>14} {:>12} {:>7} {:>7} {:>7} {:>13} {:>11} {:>12} {:>8} {:>8} {:>7}",
        "backlog",
        "aggregates",
        "table",
        "drain ev/s",
        "x raw",
        "x min",
        "x both",
        "target",
        "rtt p50 ms",
        "order bound",
        "x bound",
        "start s",
        "RSS MB"
    );
    let (shape, quiet) = (a.shape(), TableShape::QuietAnalyzed);
    // The last two: the shape every production table reaches, analyzed by autovacuum while
    // quiet, then hit by a backlog.
    let runs = [
        (small, 10, shape, None),
        (small, 100, shape, Some(0.5)),
        (small, 1_000, shape, Some(0.8)),
        (small, 100_000, shape, Some(0.8)),
        (large, 1_000, shape, None),
        (small, 1_000, quiet, None),
        (large, 1_000, quiet, None),
    ];
    let mut results = Vec::new();
    for (events, aggregates, shape, target) in runs {
        let b = Backlog {
            shape,
            ..backlog(events, aggregates)
        };
        let d = relay_drain(b, a.batch_size, a.replicas, timeout).await;
        let x_raw = d.rate / raw.rate;
        let rtt = rtt_at(aggregates);
        let bound = order_bound(aggregates, &rtt);
        println!(
            "{:>9} {:>10} {:>14} {:>12} {:>7.2} {:>7.2} {:>7.2} {:>13} {:>11} {:>12} {:>8} {:>8.2} {:>7.1}{}",
            thousands(events as f64),
            thousands(aggregates as f64),
            shape.label(),
            thousands(d.rate),
            x_raw,
            d.rate / minimal.rate,
            d.rate / if events == large { both_large } else { both },
            target.map_or("-".into(), |t| format!(">= {t} {}", verdict(x_raw >= t))),
            if bound.is_some() {
                format!("{:.2}", rtt.rtt_p50_ms)
            } else {
                "-".into()
            },
            bound.map_or("-".into(), thousands),
            bound.map_or("-".into(), |b| format!("{:.2}", d.rate / b)),
            d.startup_secs,
            d.rss_mb,
            d.note(events)
        );
        results.push(d);
    }
    let (at_small, at_large) = (results[2], results[4]);
    let (quiet_small, quiet_large) = (results[5], results[6]);
    let ratio = at_large.rate / at_small.rate;
    println!();
    println!(
        "{} / {} backlog drain rate (1,000 aggregates): {ratio:.2} (target >= 0.8: {}); the same ratio for broker and store together without the relay: {:.2} ({} / {} events/s)",
        thousands(large as f64),
        thousands(small as f64),
        verdict(ratio >= 0.8),
        both_large / both,
        thousands(both_large),
        thousands(both)
    );
    let quiet_ratio = quiet_large.rate / quiet_small.rate;
    println!(
        "quiet-analyzed table, {} / {} backlog drain rate (1,000 aggregates): {quiet_ratio:.2} (target >= 0.8: {})",
        thousands(large as f64),
        thousands(small as f64),
        verdict(quiet_ratio >= 0.8)
    );
    let against = quiet_large.rate / at_large.rate;
    println!(
        "{} backlog drain rate, quiet-analyzed / {} table (1,000 aggregates): {against:.2} (target >= 0.8: {})",
        thousands(large as f64),
        shape.label(),
        verdict(against >= 0.8)
    );
    println!(
        "relay peak RSS during the {} drain: {:.1} MB (target <= 64 MB: {})",
        thousands(large as f64),
        at_large.rss_mb,
        verdict(at_large.rss_mb <= 64.0)
    );
    println!(
        "(drain ev/s counts from the relay's first message in the queue; \"start s\" is the start-up before it)"
    );
    if results.iter().any(|d| d.timed_out) {
        println!(
            "(a drain that gave up, at --drain-timeout {} s or when a relay exited, reports the events settled by then)",
            a.drain_timeout
        );
    }
}
