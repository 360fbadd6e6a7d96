//! The consumer benchmark: the example consumer's rate (`examples/inbox_consumer.rs`, release
//! build) with the inbox against the same consumer without it (`--no-inbox`), on the same
//! queue contents: `--messages` events over `--aggregates` aggregates, published once per run
//! to a fresh RabbitMQ queue with the relay's own message properties.
//!
//! `scripts/bench-inbox.sh [--messages N] [--aggregates N] [--batch-size S]` (it builds the
//! example first: `cargo build --release --example inbox_consumer`, then `cargo bench --bench
//! inbox_consumer -- ...`). Needs Postgres and RabbitMQ as in the tests. Targets (printed,
//! not asserted): with the inbox ≥ 0.7 × without, and ≥ 3,000 messages/s.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use clap::Parser;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use outbox_relay::{broker::rabbitmq::message_properties, event::OutboxEvent};
use uuid::Uuid;

/// The tests' harness: server URLs (`OUTBOX_TEST_PG`, `OUTBOX_TEST_AMQP`) and `connect`.
#[path = "../tests/common/mod.rs"]
mod common;
use common::{amqp_url, connect, example_binary, pg_server};

#[derive(Parser, Debug)]
#[command(
    name = "inbox-consumer-bench",
    bin_name = "cargo bench --bench inbox_consumer --"
)]
struct Args {
    /// Messages in the queue for each run.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Aggregates the messages are spread over (round-robin, in `seq` order).
    #[arg(long, default_value_t = 200)]
    aggregates: usize,
    /// The consumer's `--batch-size` (messages per transaction).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Runs of each variant, alternating which goes first; medians are reported (the
    /// machine is shared, single runs are noisy).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Give up on a run after this long.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Passed by `cargo bench` to every benchmark binary.
    #[arg(long, hide = true)]
    bench: bool,
}

fn consumer_binary() -> PathBuf {
    example_binary("inbox_consumer")
}

/// The same events every run: IDs, aggregates, seqs and payloads.
fn events(args: &Args) -> Vec<OutboxEvent> {
    (0..args.messages)
        .map(|i| OutboxEvent {
            id: Uuid::from_u128(i as u128 + 1),
            seq: i as i64 + 1,
            aggregate_type: "order".into(),
            aggregate_id: format!("agg-{}", i % args.aggregates),
            event_type: "step".into(),
            payload: format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(400)),
            headers: Vec::new(),
            created_at: SystemTime::now(),
            attempts: 0,
            bucket: 0,
        })
        .collect()
}

/// Declares `queue` and publishes `events` to it (confirmed), as the relay would.
async fn fill(channel: &Channel, queue: &str, events: &[OutboxEvent]) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for chunk in events.chunks(1000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for event in chunk {
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        event.payload.as_bytes(),
                        message_properties(event),
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }
}

/// One run: fresh queue and state, the consumer until every message is applied.
async fn run(args: &Args, events: &[OutboxEvent], inbox: bool, db_url: &str) -> f64 {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = format!("inbox-bench-{}", Uuid::new_v4().simple());
    fill(&channel, &queue, events).await;
    let db = connect(db_url).await;
    db.batch_execute("DROP TABLE IF EXISTS aggregate_counts; TRUNCATE outbox_inbox; CHECKPOINT")
        .await
        .unwrap();

    let mut cmd = Command::new(consumer_binary());
    cmd.args([
        "--broker",
        "rabbitmq",
        "--amqp-url",
        &amqp_url(),
        "--queue",
        &queue,
    ])
    .args(["--database-url", db_url, "--consumer", "bench"])
    .args(["--batch-size", &args.batch_size.to_string()])
    .stdout(Stdio::inherit());
    if !inbox {
        cmd.arg("--no-inbox");
    }
    let started = Instant::now();
    let mut child: Child = cmd.spawn().unwrap();
    let want = events.len() as i64;
    loop {
        let applied: i64 = db
            .query_one(
                "SELECT coalesce(sum(events), 0)::int8 FROM aggregate_counts",
                &[],
            )
            .await
            .map(|row| row.get(0))
            .unwrap_or(0);
        if applied >= want {
            break;
        }
        assert!(
            started.elapsed() < args.timeout,
            "run timed out at {applied} of {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    events.len() as f64 / elapsed.as_secs_f64()
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let events = events(&args);
    let name = format!("inbox_bench_{}", Uuid::new_v4().simple());
    let admin = connect(&format!("{}/postgres", pg_server())).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db_url = format!("{}/{name}", pg_server());
    let migrated = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["migrate", "--inbox", "--database-url", &db_url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(migrated.success());

    println!(
        "inbox consumer benchmark: {} messages over {} aggregates, batches of {}, {} rounds",
        args.messages, args.aggregates, args.batch_size, args.rounds
    );
    let (mut withs, mut withouts) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        for inbox in [round % 2 == 1, round % 2 == 0] {
            let rate = run(&args, &events, inbox, &db_url).await;
            println!(
                "  round {round}: {} {rate:>8.0} messages/s",
                if inbox {
                    "with inbox:   "
                } else {
                    "without inbox:"
                }
            );
            if inbox { &mut withs } else { &mut withouts }.push(rate);
        }
    }
    let (with, without) = (median(&mut withs), median(&mut withouts));
    println!("  median without inbox: {without:>8.0} messages/s");
    println!("  median with inbox:    {with:>8.0} messages/s");
    println!(
        "  ratio: {:.2} × (target ≥ 0.7 ×); with inbox {} 3,000 messages/s",
        with / without,
        if with >= 3000.0 { "≥" } else { "<" }
    );
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}
