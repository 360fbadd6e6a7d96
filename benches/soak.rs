//! The soak (issue 23): three replicas of the release binary under steady load for as long as
//! asked, with one fault at a time, in turn, every `--fault-interval`; then the backlog drains
//! and a table says what was written, delivered, duplicated, lost, out of order and dead, and
//! what a replica that was never restarted costs (RSS, open files, database sessions) at the
//! start and the end.
//!
//! `scripts/soak.sh [minutes]` (default 30) builds the release binary and runs
//! `cargo bench --bench soak -- --minutes N`. Needs Postgres and RabbitMQ as in the tests, and
//! `rabbitmqctl` (as root) for closing broker connections (without it, the fault cuts the
//! replicas' broker proxies instead). Not in CI. Exits 1 if an event was lost or an aggregate's
//! order broke.
//!
//! Each replica reaches Postgres and RabbitMQ through its own pair of proxies
//! (`tests/common/proxy.rs`), so one replica's path can freeze. Replica 0 is never restarted
//! nor frozen: its figures are the leak check. The faults, in turn:
//! 1. SIGTERM replica 1 or 2 (alternately), start it again;
//! 2. kill -9 replica 1 or 2, start it again;
//! 3. terminate every relay session of the database (pool, LISTEN, coordination);
//! 4. close every replica's broker connection (`rabbitmqctl close_connection`);
//! 5. freeze replica 1 or 2's Postgres path (open connections never answer again);
//! 6. a poisoned aggregate: events of type `poisonK` are unroutable (the queue is bound to
//!    `order.#` only), so the head of that aggregate is retried while it keeps growing; after
//!    `--poison-for` its routing key is bound and it drains;
//! 7. freeze replica 1 or 2's RabbitMQ path.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Parser;
use rand::seq::IteratorRandom;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{
    TestBroker, TestDb, connect, pg_server,
    process::relay_binary,
    proxy::{Proxy, postgres_proxy, rabbitmq_proxy},
    rabbitmq::rabbitmq_close_connections,
};

#[derive(Parser, Debug)]
#[command(name = "soak", bin_name = "cargo bench --bench soak --")]
struct Args {
    /// How long the load and the faults last.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// One fault every this long (the first after half of it).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    fault_interval: Duration,
    /// How long a poisoned aggregate stays unroutable.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    poison_for: Duration,
    /// Events per second the producers write (three producers, short transactions).
    #[arg(long, default_value_t = 150)]
    rate: u32,
    /// Aggregates the load is spread over.
    #[arg(long, default_value_t = 200)]
    aggregates: usize,
    /// How long the backlog may take to drain after the load stops.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Passed by `cargo bench` to every benchmark binary.
    #[arg(long, hide = true)]
    bench: bool,
}

const REPLICAS: usize = 3;
/// Producer tasks, each writing one transaction of `BATCH` events per tick.
const PRODUCERS: u32 = 3;
const BATCH: u32 = 5;

/// Every fault, in the order they are applied.
const FAULTS: [&str; 7] = [
    "sigterm",
    "kill-9",
    "terminate-db-sessions",
    "close-broker-connections",
    "freeze-postgres",
    "poison",
    "freeze-rabbitmq",
];

/// One relay replica: the child process and the proxies it reaches the servers through.
struct Replica {
    index: usize,
    child: Child,
    pg: Proxy,
    amqp: Proxy,
    envs: Vec<(&'static str, String)>,
    log: PathBuf,
    starts: usize,
}

impl Replica {
    async fn start(index: usize, db: &TestDb, exchange: &str, logs: &std::path::Path) -> Self {
        let (pg, pg_url) = postgres_proxy(&db.name).await;
        let (amqp, amqp_url) = rabbitmq_proxy().await;
        let envs = vec![
            ("OUTBOX_RELAY_DATABASE__URL", pg_url),
            ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url),
            (
                "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
                exchange.to_owned(),
            ),
        ];
        let log = logs.join(format!("replica-{index}.log"));
        let child = spawn(&envs, &log);
        Self {
            index,
            child,
            pg,
            amqp,
            envs,
            log,
            starts: 1,
        }
    }

    fn restart(&mut self) {
        self.child = spawn(&self.envs, &self.log);
        self.starts += 1;
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait for the exit (bounded); the exit status, or `None` if it had to be killed.
    async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        common::process::sigterm(&self.child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill9();
        None
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `outbox-relay run` with the default configuration but for the URLs, the exchange and a
/// metrics port of its own, logging at `warn` to `log` (appended across restarts).
fn spawn(envs: &[(&str, String)], log: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    relay_binary()
        .env("OUTBOX_RELAY_METRICS__LISTEN", "127.0.0.1:0")
        .env("OUTBOX_RELAY_LOG__LEVEL", "warn")
        .envs(envs.iter().map(|(k, v)| (k, v.as_str())))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap()
}

/// What the consumer saw: deliveries per event ID, the last first-delivered `seq` per
/// aggregate, and order violations.
#[derive(Default)]
struct Seen {
    deliveries: HashMap<String, u32>,
    last_seq: HashMap<String, i64>,
    violations: Vec<String>,
}

/// Consumes the soak queue for the whole run.
async fn consume(broker: &TestBroker) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut rx = broker.consume().await;
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let mut s = sink.lock().unwrap();
            let count = s.deliveries.entry(m.message_id.clone()).or_insert(0);
            *count += 1;
            if *count > 1 {
                continue;
            }
            let aggregate = m.header("x-aggregate-id").unwrap_or("?").to_owned();
            let seq = m.seq.unwrap_or(-1);
            let prev = s.last_seq.insert(aggregate.clone(), seq).unwrap_or(0);
            if seq <= prev {
                s.violations.push(format!(
                    "aggregate {aggregate}: seq {seq} first delivered after {prev}"
                ));
            }
        }
    });
    seen
}

/// Event IDs the producers committed.
type Written = Arc<Mutex<Vec<String>>>;

/// `PRODUCERS` tasks, each writing `BATCH` events over distinct random aggregates (in sorted
/// order, as the enqueue function's locks ask) in one short transaction per tick.
fn produce(
    url: &str,
    args: &Args,
    written: Written,
    stop: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let ticks_per_s = (args.rate / (PRODUCERS * BATCH)).max(1);
    let period = Duration::from_secs(1) / ticks_per_s;
    (0..PRODUCERS)
        .map(|_| {
            let (url, written, stop, aggregates) = (
                url.to_owned(),
                written.clone(),
                stop.clone(),
                args.aggregates,
            );
            tokio::spawn(async move {
                let mut client = connect(&url).await;
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let mut picked =
                        (0..aggregates).choose_multiple(&mut rand::rng(), BATCH as usize);
                    picked.sort_unstable();
                    let tx = client.transaction().await.unwrap();
                    let mut ids = Vec::with_capacity(picked.len());
                    for a in picked {
                        let row = tx
                            .query_one(
                                "SELECT outbox_events_enqueue('order', $1, 'step', $2)::text",
                                &[&format!("agg-{a:03}"), &serde_json::json!({ "a": a })],
                            )
                            .await
                            .unwrap();
                        ids.push(row.get::<_, String>(0));
                    }
                    tx.commit().await.unwrap();
                    written.lock().unwrap().extend(ids);
                }
            })
        })
        .collect()
}

/// A poisoned hot aggregate: writes events of type `poison{turn}` (unroutable: nothing is
/// bound to it) to one aggregate at 10/s for `poison_for`, then binds its routing key so the
/// aggregate drains. Returns when the binding is in place.
async fn poison(
    broker: Arc<TestBroker>,
    client: Arc<Client>,
    written: Written,
    turn: usize,
    poison_for: Duration,
) {
    let aggregate_type = format!("poison{turn}");
    let aggregate = format!("poison-{turn}");
    let until = Instant::now() + poison_for;
    while Instant::now() < until {
        let id: String = client
            .query_one(
                "SELECT outbox_events_enqueue($1, $2, 'bad', '{}')::text",
                &[&aggregate_type, &aggregate],
            )
            .await
            .unwrap()
            .get(0);
        written.lock().unwrap().push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.bind(&format!("{aggregate_type}.#")).await;
}

/// What a replica costs at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    rss_kb: u64,
    open_files: usize,
    db_sessions: i64,
}

async fn footprint(replica: &Replica, admin: &Client, db: &str) -> Footprint {
    let pid = replica.pid();
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    // The server sees the replica's sessions coming from its proxy's upstream ports.
    let ports: Vec<i32> = replica
        .pg
        .upstream_ports()
        .into_iter()
        .map(i32::from)
        .collect();
    let db_sessions = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND client_port = ANY($2)",
            &[&db, &ports],
        )
        .await
        .unwrap()
        .get(0);
    Footprint {
        rss_kb,
        open_files,
        db_sessions,
    }
}

/// Ends every relay session of `db` (pool, LISTEN, coordination); returns how many.
async fn terminate_relay_sessions(admin: &Client, db: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name LIKE 'outbox-relay%' \
               AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// Closes every replica's broker connections: RabbitMQ's `close_connection` when
/// `rabbitmqctl` works, else a cut of the replicas' broker proxies (restored a second later).
async fn close_broker_connections(replicas: &[Replica]) -> String {
    let ports: Vec<u16> = replicas
        .iter()
        .flat_map(|r| r.amqp.upstream_ports())
        .collect();
    let ctl_works = tokio::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if ctl_works {
        let closed = rabbitmq_close_connections(&ports).await;
        format!("rabbitmqctl closed {closed} connections")
    } else {
        replicas.iter().for_each(|r| r.amqp.cut());
        tokio::time::sleep(Duration::from_secs(1)).await;
        replicas.iter().for_each(|r| r.amqp.restore());
        "broker proxies cut and restored (no rabbitmqctl)".into()
    }
}

fn elapsed(start: Instant) -> String {
    let s = start.elapsed().as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();

    // GIVEN a fresh database, an exchange whose queue takes `order.#` only (so `poisonK`
    // events are unroutable until their key is bound), and a consumer for the whole run
    let db = TestDb::migrated().await;
    let broker = Arc::new(TestBroker::new().await);
    broker.bind("order.#").await;
    let seen = consume(&broker).await;
    let admin = connect(&format!("{}/postgres", pg_server())).await;

    // AND three replicas, each through its own proxies
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas.push(Replica::start(i, &db, &broker.exchange, &logs).await);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start_footprint = footprint(&replicas[0], &admin, &db.name).await;

    // AND a steady load
    let start = Instant::now();
    let written: Written = Arc::default();
    let stop = CancellationToken::new();
    let producers = produce(&db.url, &args, written.clone(), stop.clone());
    let poison_client = Arc::new(db.client().await);
    eprintln!(
        "soak: {} min, {} events/s over {} aggregates, a fault every {:?}; relay logs in {}",
        args.minutes,
        args.rate,
        args.aggregates,
        args.fault_interval,
        logs.display()
    );

    // WHEN a fault comes every interval, in turn
    let run_for = Duration::from_secs(args.minutes * 60);
    let mut applied: Vec<(String, String, String)> = Vec::new();
    let mut poisons: Vec<JoinHandle<()>> = Vec::new();
    let mut next = start + args.fault_interval / 2;
    let mut turn = 0;
    while next < start + run_for {
        tokio::time::sleep_until(next.into()).await;
        let kind = FAULTS[turn % FAULTS.len()];
        // Faults aimed at one replica alternate between replicas 1 and 2.
        let target = 1 + turn % 2;
        let at = elapsed(start);
        let detail = match kind {
            "sigterm" => {
                let r = &mut replicas[target];
                let status = r.terminate().await;
                r.restart();
                format!("replica {target}: exit {status:?}, restarted")
            }
            "kill-9" => {
                let r = &mut replicas[target];
                r.kill9();
                r.restart();
                format!("replica {target}: killed, restarted")
            }
            "terminate-db-sessions" => {
                let n = terminate_relay_sessions(&admin, &db.name).await;
                format!("{n} relay sessions terminated")
            }
            "close-broker-connections" => close_broker_connections(&replicas).await,
            "freeze-postgres" => {
                replicas[target].pg.freeze();
                format!("replica {target}: open Postgres connections frozen")
            }
            "freeze-rabbitmq" => {
                replicas[target].amqp.freeze();
                format!("replica {target}: open RabbitMQ connections frozen")
            }
            "poison" => {
                poisons.push(tokio::spawn(poison(
                    broker.clone(),
                    poison_client.clone(),
                    written.clone(),
                    turn,
                    args.poison_for,
                )));
                format!(
                    "aggregate poison-{turn} unroutable for {:?}, then bound",
                    args.poison_for
                )
            }
            _ => unreachable!(),
        };
        eprintln!("soak {at}: {kind}: {detail}");
        applied.push((at, kind.to_owned(), detail));
        turn += 1;
        next += args.fault_interval;
    }
    tokio::time::sleep_until((start + run_for).into()).await;

    // THEN once the load stops, every written event is delivered within the drain bound
    stop.cancel();
    for p in producers {
        p.await.unwrap();
    }
    for p in poisons {
        p.await.unwrap();
    }
    let load_ended = Instant::now();
    let written: Vec<String> = written.lock().unwrap().clone();
    let drained = loop {
        let missing = {
            let s = seen.lock().unwrap();
            written
                .iter()
                .filter(|id| !s.deliveries.contains_key(*id))
                .count()
        };
        if missing == 0 || load_ended.elapsed() > args.drain_timeout {
            break missing == 0;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drain_time = load_ended.elapsed();
    // Late duplicates (a redelivery after a settle was lost) land within a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end_footprint = footprint(&replicas[0], &admin, &db.name).await;
    let db_client = db.client().await;
    let dead: i64 = db_client
        .query_one(
            "SELECT count(*) FROM outbox_events WHERE status = 'dead'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // What the table still holds when a drain did not complete: which events are stuck.
    let left = db_client
        .query_one(
            "SELECT count(*), count(DISTINCT aggregate_id), COALESCE(max(attempts), 0), \
                    COALESCE(extract(epoch FROM now() - min(created_at))::int8, 0) \
             FROM outbox_events WHERE status = 'pending'",
            &[],
        )
        .await
        .unwrap();
    let pending = format!(
        "{} pending events over {} aggregates (most attempts {}, oldest {} s)",
        left.get::<_, i64>(0),
        left.get::<_, i64>(1),
        left.get::<_, i32>(2),
        left.get::<_, i64>(3)
    );
    let mut exits = Vec::new();
    for r in &mut replicas {
        let status = r.terminate().await;
        exits.push(format!(
            "replica {} ({} starts): {status:?}",
            r.index, r.starts
        ));
    }

    // The report (the consumer's figures taken out of the lock first).
    let s = std::mem::take(&mut *seen.lock().unwrap());
    let unique_written = written
        .iter()
        .filter(|id| s.deliveries.contains_key(*id))
        .count();
    let lost = written.len() - unique_written;
    let duplicates: u64 = s.deliveries.values().map(|c| u64::from(c - 1)).sum();
    let unknown = s.deliveries.len() - unique_written;
    let violations = s.violations.len();
    let mut out = String::new();
    let minutes = (load_ended - start).as_secs_f64() / 60.0; // under load, not the drain
    let _ = writeln!(out, "\nsoak results");
    let _ = writeln!(
        out,
        "| minutes | written | delivered (unique) | duplicates | lost | order violations | dead |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| {:.1} | {} | {} | {} | {} | {} | {} |",
        minutes,
        written.len(),
        unique_written,
        duplicates,
        lost,
        violations,
        dead
    );
    let _ = writeln!(
        out,
        "\nreplica 0 (never restarted, pid {})",
        replicas[0].pid()
    );
    let _ = writeln!(out, "| | RSS | open files | database sessions |");
    let _ = writeln!(out, "|---|---|---|---|");
    for (label, f) in [("start", start_footprint), ("end", end_footprint)] {
        let _ = writeln!(
            out,
            "| {label} | {:.1} MB | {} | {} |",
            f.rss_kb as f64 / 1024.0,
            f.open_files,
            f.db_sessions
        );
    }
    let _ = writeln!(out, "\nfaults ({}):", applied.len());
    for (at, kind, detail) in &applied {
        let _ = writeln!(out, "  {at}  {kind:<25} {detail}");
    }
    let _ = writeln!(
        out,
        "\ndrain after the load stopped: {} in {:.1} s (bound {:?})",
        if drained { "complete" } else { "INCOMPLETE" },
        drain_time.as_secs_f64(),
        args.drain_timeout
    );
    let _ = writeln!(out, "left in the table: {pending}");
    if unknown > 0 {
        let _ = writeln!(out, "deliveries of IDs no producer recorded: {unknown}");
    }
    for v in s.violations.iter().take(10) {
        let _ = writeln!(out, "order violation: {v}");
    }
    let _ = writeln!(out, "relays stopped: {}", exits.join("; "));
    let _ = writeln!(out, "relay logs: {}", logs.display());
    println!("{out}");
    broker.cleanup().await;

    if lost > 0 || violations > 0 {
        println!("FAILED: events lost or order broken");
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
