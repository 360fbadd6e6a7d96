//! The relay benchmark: one run measures the raw limits of this machine and the relay against
//! them, side by side (see the README's Performance section).
//!
//! `cargo bench --bench relay -- [--events N] [--aggregates N]
//!  [--table-shape unanalyzed|analyzed|quiet] [--quiet-rows N] [--analyze] [--payload-bytes B]
//!  [--batch-size S] [--replicas R] [--drain-timeout T] [--latency-seconds T] [--rate R]
//!  [--producer-seconds T] [--sqs] [--sqs-events N] [--skip-broker] [--skip-store]
//!  [--skip-drain] [--skip-latency] [--skip-producers]`
//! `cargo bench --bench relay -- --matrix [--matrix-scale F] [...]`
//! `cargo bench --bench relay -- --retained N[,N...] [--idle-seconds T]
//!  [--retained-drain-events N] [...]`
//! (`-- --help` lists them.)
//!
//! The backlog is spread over `--aggregates` aggregates (default 1,000) round-robin in `seq`
//! order, written by one INSERT ... SELECT and measured in a table shape: `unanalyzed`
//! (default) as loaded, no statistics, as a backlog arrives in production between autovacuum
//! runs; `analyzed` (or `--analyze`) VACUUM ANALYZEd after the load; `quiet` analyzed while
//! holding only `--quiet-rows` dispatched rows, then the backlog, as autovacuum leaves a
//! table before an outage's backlog. `--matrix` runs the raw broker limit and the confirm
//! round trips once, then the drain for aggregates 10 / 100 / 1,000 / 100,000 at a 50k
//! backlog and 1,000 at 500k, then 50k and 500k over 1,000 on the quiet-analyzed table, as
//! one table against them. `--retained` measures the idle relay's CPU and a drain on a table
//! retaining N dispatched rows, each next to an empty table.
//!
//! Needs Postgres and RabbitMQ as in the tests (`scripts/services.sh`); `--sqs` adds part 7,
//! the SQS variant against the emulator at `OUTBOX_TEST_SQS` (default moto on
//! 127.0.0.1:4566): the emulator's own SendMessageBatch rate next to the relay's drain. Every
//! part uses its own database and exchange/queue. The relay runs as the release binary with
//! its default config but for what the benchmark sets (database, exchange, batch size,
//! metrics port, rebalance interval, log level); `OUTBOX_RELAY_*` variables in the
//! environment reach it too (e.g. `OUTBOX_RELAY_RELAY__MODE=poll`) and are printed.
//!
//! This file runs the parts in order and prints them; [`args`] holds the flags, [`fixtures`]
//! the databases, table shapes, backlogs and queues, [`limits`] parts 1-2 (the raw limits),
//! [`drain`] parts 3 and 6, [`latency`] part 4, [`producers`] part 5, [`sqs`] part 7,
//! [`matrix`] `--matrix`, [`retained`] `--retained` with [`idle`] its CPU accounting,
//! [`report`] the formatting shared by the printouts.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod args;
mod drain;
mod fixtures;
mod idle;
mod latency;
mod limits;
mod matrix;
mod producers;
mod report;
mod retained;
mod sqs;

use std::time::Duration;

use clap::Parser;

use crate::{
    args::Args,
    drain::relay_drain,
    fixtures::Backlog,
    latency::latency,
    limits::{
        BrokerRun, Confirms, RAW_WINDOW, Shape, order_bound, raw_broker, raw_broker_limits,
        raw_combined, raw_store, round_trip,
    },
    matrix::matrix,
    producers::producers,
    report::{describe_setup, thousands},
    retained::retained,
    sqs::{SQS_IN_FLIGHT, raw_sqs, relay_drain_sqs},
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let a = Args::parse();
    if a.matrix {
        matrix(&a).await;
        return;
    }
    if !a.retained.is_empty() {
        retained(&a).await;
        return;
    }
    let backlog = a.backlog(a.events, a.aggregates);
    let timeout = Duration::from_secs(a.drain_timeout);
    println!(
        "outbox-relay benchmark: {} events over {} aggregates",
        thousands(a.events as f64),
        thousands(a.aggregates as f64)
    );
    describe_setup(&a, &a.shape().describe(a.quiet_rows)).await;
    let (broker, minimal, serial, at_aggregates) = if a.skip_broker {
        (
            BrokerRun::SKIPPED,
            BrokerRun::SKIPPED,
            BrokerRun::SKIPPED,
            BrokerRun::SKIPPED,
        )
    } else {
        let (broker, minimal) = raw_broker_limits(a.events, a.payload_bytes).await;
        let serial = raw_broker(
            a.events.min(2000),
            a.payload_bytes,
            1,
            Confirms::Plain,
            Shape::Relay,
        )
        .await;
        // The round trip with as many confirms outstanding as there are aggregates, for
        // the order bound of the drain, when the aggregates are what binds.
        let at_aggregates = if a.aggregates < RAW_WINDOW && !a.skip_drain {
            round_trip(a.aggregates, a.payload_bytes).await
        } else {
            BrokerRun::SKIPPED
        };
        (broker, minimal, serial, at_aggregates)
    };
    let store = if a.skip_store {
        f64::NAN
    } else {
        raw_store(backlog, a.batch_size).await
    };
    let both = if a.skip_store || a.skip_broker {
        f64::NAN
    } else {
        raw_combined(backlog, a.batch_size).await
    };
    println!(
        "1. raw broker (lapin, {RAW_WINDOW} outstanding confirms) {:>10} msg/s   (serial confirms: {} msg/s; the relay's message properties)",
        thousands(broker.rate),
        thousands(serial.rate)
    );
    println!(
        "   (only delivery_mode and message_id: {} msg/s)",
        thousands(minimal.rate)
    );
    println!(
        "2. raw store (relay claim + mark SQL, no broker) {:>10} rows/s",
        thousands(store)
    );
    println!(
        "   raw broker and store together (read, publish, mark; no relay) {} events/s",
        thousands(both)
    );
    if !a.skip_drain {
        let d = relay_drain(backlog, a.batch_size, a.replicas, timeout).await;
        let limit = broker.rate.min(store);
        println!(
            "3. relay drain ({} replica(s))                   {:>10} events/s  = {:.2} x min(1, 2) = {}  ({:.2} x raw broker){}",
            a.replicas,
            thousands(d.rate),
            d.rate / limit,
            thousands(limit),
            d.rate / broker.rate,
            d.note(a.events)
        );
        println!(
            "   ({:.2} x the raw broker with minimal properties, {:.2} x broker and store together)",
            d.rate / minimal.rate,
            d.rate / both
        );
        println!(
            "   (from the first message in the queue; the relay's start-up before it took {:.2} s, {} events/s with it)",
            d.startup_secs,
            thousands(d.rate_with_startup())
        );
        if let Some(bound) = order_bound(a.aggregates, &at_aggregates) {
            println!(
                "   order bound: {} aggregates / {:.2} ms confirm round trip at {} outstanding = {} events/s ({:.2} x bound)",
                a.aggregates,
                at_aggregates.rtt_p50_ms,
                a.aggregates,
                thousands(bound),
                d.rate / bound
            );
        }
        println!(
            "6. relay peak RSS during the drain               {:>10.1} MB",
            d.rss_mb
        );
    }
    if !a.skip_latency {
        let (p50, p99, max, n) = latency(a.latency_seconds, a.rate).await;
        println!(
            "4. notify wake-up latency at {} events/s ({n} events): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            a.rate
        );
    }
    if !a.skip_producers {
        let (bare, always, trigger_only, ours) = producers(a.producer_seconds).await;
        println!(
            "5. producer commits/s (4 conns, 1 row/tx): no trigger {bare:.0} | always-NOTIFY trigger {always:.0} ({:.2}x) | relay's trigger, relay busy (no NOTIFY) {trigger_only:.0} ({:.2}x) | relay's trigger + running relay draining them {ours:.0} ({:.2}x)",
            always / bare,
            trigger_only / bare,
            ours / bare
        );
    }
    if a.sqs {
        let raw = raw_sqs(a.sqs_events, a.payload_bytes, a.aggregates).await;
        let sqs_backlog = Backlog {
            events: a.sqs_events,
            ..backlog
        };
        let relay = relay_drain_sqs(sqs_backlog, a.batch_size, timeout).await;
        println!(
            "7. SQS emulator ({} events): raw SendMessageBatch (10/call, {SQS_IN_FLIGHT} in flight) {raw:.0} msg/s | relay drain {:.0} events/s = {:.2} x raw{}",
            a.sqs_events,
            relay.rate,
            relay.rate / raw,
            relay.note(a.sqs_events)
        );
    }
}
