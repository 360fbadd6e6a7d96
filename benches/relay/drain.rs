//! Relay drain runs (parts 3 and 6): spawning and stopping the relay's release binary,
//! watching the backlog drain, the relays' peak RSS, and the loss check against the queue.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lapin::{options::QueueDeclareOptions, types::FieldTable};
use outbox_relay::store::status;
use tokio_postgres::Client;

use crate::{
    fixtures::{
        Backlog, amqp, broker_cleanup, connect, drop_db, fresh_broker, prefilled_db, table,
    },
    report::thousands,
};

/// Starts the relay's release binary on `url`, publishing to `exchange` with `batch` as its
/// batch size; `extra` environment variables are set after the benchmark's own.
pub fn spawn_relay(url: &str, exchange: &str, batch: usize, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    cmd.env("OUTBOX_RELAY_DATABASE__URL", url)
        .env("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp())
        .env("OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE", exchange)
        .env("OUTBOX_RELAY_RELAY__BATCH_SIZE", batch.to_string())
        .env("OUTBOX_RELAY_METRICS__LISTEN", "127.0.0.1:0")
        .env("OUTBOX_RELAY_RELAY__REBALANCE_INTERVAL", "500ms")
        .env("OUTBOX_RELAY_LOG__LEVEL", "warn")
        .envs(extra.iter().copied())
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // Environment variables of the caller win (e.g. OUTBOX_RELAY_LOG__LEVEL=debug with
    // OUTBOX_BENCH_RELAY_LOG=path to see the pipeline's state once a second).
    cmd.envs(std::env::vars().filter(|(k, _)| k.starts_with("OUTBOX_RELAY_")));
    if let Ok(path) = std::env::var("OUTBOX_BENCH_RELAY_LOG") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        cmd.stderr(file);
    }
    cmd.spawn().unwrap()
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Stops a relay as an orchestrator would (SIGTERM) and waits for it.
pub fn stop(mut child: Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let _ = child.wait();
}

/// The first pending event at or after `from` (a `seq`), if any: the end-of-drain check,
/// cheap on purpose (one row through the partial pending index, every 50 ms; a `count(*)`
/// over a 100k backlog every few ms would take CPU from the relay it measures). The caller
/// passes the last answer as `from`: no row before it can be pending again (the backlog is
/// written before the relay starts, and a relay only ever takes a row out of `pending`, by
/// marking or deleting it), and the index scan then starts there instead of stepping over
/// the index entries of every row settled so far.
async fn first_pending(client: &Client, from: i64) -> Option<i64> {
    client
        .query_opt(
            "SELECT seq FROM outbox_events WHERE status = 'pending' AND seq >= $1 \
             ORDER BY seq LIMIT 1",
            &[&from],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Rows still pending and rows gone dead (the library's backlog query, as `outbox-relay
/// status` counts them; for the end of a run only).
async fn pending_and_dead(client: &Client) -> (usize, usize) {
    let backlog = status::backlog(client, &table()).await.unwrap();
    (backlog.pending as usize, backlog.dead as usize)
}

/// How a drain went.
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    /// Events taken out of `pending` per second, from the relays' first message in the
    /// queue to the end (or the timeout); the relays' start-up is `startup_secs`.
    pub rate: f64,
    /// Spawn to first message (SQS: 0, the rate then includes the start-up).
    pub startup_secs: f64,
    /// Events taken out of `pending` by the end.
    pub settled: usize,
    /// Spawn to the end.
    pub secs: f64,
    /// Gave up at `--drain-timeout`, or a relay exited.
    pub timed_out: bool,
    /// Highest peak RSS of the relay processes.
    pub rss_mb: f64,
}

impl Drain {
    /// Events per second including the start-up.
    pub fn rate_with_startup(&self) -> f64 {
        self.settled as f64 / self.secs
    }

    /// What to print after a drain that gave up: how far it got.
    pub fn note(&self, events: usize) -> String {
        if self.timed_out {
            format!(
                "  (gave up after {:.0} s: {} of {} events)",
                self.secs,
                thousands(self.settled as f64),
                thousands(events as f64)
            )
        } else {
            String::new()
        }
    }
}

/// Waits until no event is pending (or `timeout` after `started`, or a relay exits), noting
/// the peak RSS of the relays. The rate is counted from `first_publish`.
pub async fn wait_drained(
    client: &Client,
    events: usize,
    (started, first_publish): (Instant, Instant),
    timeout: Duration,
    relays: &mut [Child],
) -> Drain {
    let mut rss: f64 = 0.0;
    let mut from = 0;
    let mut timed_out = false;
    'poll: while let Some(seq) = first_pending(client, from).await {
        from = seq;
        for relay in relays.iter_mut() {
            rss = rss.max(peak_rss_mb(relay.id()));
            if let Ok(Some(status)) = relay.try_wait() {
                eprintln!("   !! relay {} exited: {status}", relay.id());
                timed_out = true;
                break 'poll;
            }
        }
        if started.elapsed() >= timeout {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = Instant::now();
    let settled = if timed_out {
        events - pending_and_dead(client).await.0
    } else {
        events
    };
    for relay in relays.iter() {
        rss = rss.max(peak_rss_mb(relay.id()));
    }
    Drain {
        rate: settled as f64 / (end - first_publish).as_secs_f64(),
        startup_secs: (first_publish - started).as_secs_f64(),
        settled,
        secs: (end - started).as_secs_f64(),
        timed_out,
        rss_mb: rss,
    }
}

/// Messages in `queue` (a passive declare: cheap for the broker).
async fn queue_len(ch: &lapin::Channel, queue: &str) -> usize {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count() as usize
}

/// 3 + 6. The relay draining a pre-written backlog in a fresh database and into a fresh
/// queue: events/s and peak RSS (see [`drain_db`]).
pub async fn relay_drain(b: Backlog, batch: usize, replicas: usize, timeout: Duration) -> Drain {
    let (name, url) = prefilled_db(b).await;
    let drain = drain_db(&url, b.events, batch, replicas, timeout).await;
    drop_db(&name).await;
    drain
}

/// The relay draining the `events` pending events already written to the database at `url`
/// into a fresh queue: events/s and peak RSS. Afterwards the queue is checked against the
/// table: fewer messages than events settled as dispatched is a loss, and says so.
pub async fn drain_db(
    url: &str,
    events: usize,
    batch: usize,
    replicas: usize,
    timeout: Duration,
) -> Drain {
    let (conn, exchange, queue) = fresh_broker().await;
    let client = connect(url).await;
    let ch = conn.create_channel().await.unwrap();
    let started = Instant::now();
    let mut children: Vec<Child> = (0..replicas)
        .map(|_| spawn_relay(url, &exchange, batch, &[]))
        .collect();
    // The relays' start-up (connecting, taking their buckets) is timed apart: the rate runs
    // from their first message in the queue, the steady drain.
    while queue_len(&ch, &queue).await == 0
        && started.elapsed() < timeout
        && children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_publish = Instant::now();
    let drain = wait_drained(
        &client,
        events,
        (started, first_publish),
        timeout,
        &mut children,
    )
    .await;
    children.into_iter().for_each(stop);
    let (pending, dead) = pending_and_dead(&client).await;
    let dispatched = events - pending - dead;
    let queued = queue_len(&ch, &queue).await;
    if queued < dispatched {
        eprintln!(
            "   !! LOSS: {dispatched} events settled as dispatched, the queue holds only {queued} messages"
        );
    }
    if dead > 0 {
        eprintln!("   !! {dead} events went dead");
    }
    broker_cleanup(&conn, &exchange, &queue).await;
    drain
}
