//! The idle relay's cost (`--retained`): the CPU time Postgres and the relay spend while
//! nothing is pending, read from `/proc` at both ends of a window: Postgres processes from
//! `/proc/<pid>/schedstat` (ns; they are single-threaded), the relay from its threads'
//! schedstat and its `/proc/<pid>/stat` (utime + stime of all threads, ended ones included,
//! in 10 ms ticks), whichever says more.
//!
//! Needs the Postgres server on this host (its processes visible in this `/proc`), as in the
//! tests' services; otherwise the Postgres columns read 0 next to "0 backends".

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use outbox_relay::config::RelayConfig;

use crate::{
    drain::{spawn_relay, stop},
    fixtures::{broker_cleanup, connect, fresh_broker, pg_server},
};

/// Spawn to the start of the window: connecting, migrating checks, taking the buckets.
const STARTUP: Duration = Duration::from_secs(5);

/// CPU time over a window, each as a percentage of one core (cpu seconds / wall seconds).
#[derive(Clone, Copy, Debug)]
pub struct Idle {
    /// The client backends connected to the relay's database: the relay's sessions.
    pub backends: f64,
    /// Backends of the database found at either end of the window and alive in this
    /// `/proc` at its end (0: the server's processes are not visible here).
    pub backend_count: usize,
    /// Every `postgres` process on the host: the relay's backends, the server's background
    /// processes and anything else the server did meanwhile (other databases included).
    pub all_postgres: f64,
    /// The relay process.
    pub relay: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK` once; 100 if it
/// cannot say).
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The command name and the CPU time (utime + stime, all threads, ended ones included) of
/// process `pid`, in ns but counted in clock ticks (10 ms at 100 Hz).
fn stat_cpu(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the
    // last ')'; after it, field 3 (state) is index 0, utime (14) index 11, stime (15) 12.
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) * 1_000_000_000 / ticks_per_second()))
}

/// The CPU time of single-threaded process `pid` in ns: its time on a CPU from
/// `/proc/<pid>/schedstat` (ns, exact, but its main thread only: right for Postgres, whose
/// processes have one), else [`stat_cpu`]'s ticks. With its command name.
fn process_cpu(pid: u32) -> Option<(String, u64)> {
    let (comm, ticks) = stat_cpu(pid)?;
    let exact = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    Some((comm, exact.unwrap_or(ticks)))
}

/// CPU time (ns) of each thread of process `pid` (`/proc/<pid>/task/<tid>/schedstat`), by
/// thread id.
fn threads_cpu(pid: u32) -> HashMap<u32, u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|tid| {
                    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
                        .ok()?;
                    Some((tid, s.split_whitespace().next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The relay's CPU time (ns) in a window: the larger of its threads' exact times (which miss
/// a thread that ended in the window) and its process times (which count every thread, in
/// clock ticks): each can only undercount.
fn relay_spent(
    (stat_before, threads_before): &(Option<u64>, HashMap<u32, u64>),
    (stat_after, threads_after): &(Option<u64>, HashMap<u32, u64>),
) -> u64 {
    let by_stat = match (stat_before, stat_after) {
        (Some(b), Some(a)) => a.saturating_sub(*b),
        _ => 0,
    };
    by_stat.max(spent(threads_before, threads_after, None))
}

/// The relay's process CPU time and its threads', for [`relay_spent`].
fn relay_cpu(pid: u32) -> (Option<u64>, HashMap<u32, u64>) {
    (stat_cpu(pid).map(|(_, ns)| ns), threads_cpu(pid))
}

/// CPU time (ns) of every process named `postgres`, by pid.
fn postgres_cpu() -> HashMap<u32, u64> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| {
                    let (comm, ns) = process_cpu(pid)?;
                    (comm == "postgres").then_some((pid, ns))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time (ns) spent between two snapshots by the processes of `pids` (all when `None`)
/// alive at the end: one born in the window counts whole, one that ended in it is lost
/// (the relay's sessions live as long as it does).
fn spent(
    before: &HashMap<u32, u64>,
    after: &HashMap<u32, u64>,
    pids: Option<&HashSet<u32>>,
) -> u64 {
    after
        .iter()
        .filter(|(pid, _)| pids.is_none_or(|p| p.contains(pid)))
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// The client backends connected to database `name` (asked from the `postgres` database,
/// so the asking session is not one of them).
async fn backend_pids(admin: &tokio_postgres::Client, name: &str) -> HashSet<u32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend'",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0) as u32)
        .collect()
}

/// The relay started on database `name` at `url` with nothing pending and its default
/// config (status page and gauges on, their default intervals, the default rebalance
/// interval instead of the benchmark's 500 ms), measured for `seconds` after [`STARTUP`].
pub async fn idle_cost(name: &str, url: &str, batch: usize, seconds: u64) -> Idle {
    let (conn, exchange, queue) = fresh_broker().await;
    let rebalance = format!(
        "{}ms",
        RelayConfig::default().rebalance_interval.as_millis()
    );
    let mut relay = spawn_relay(
        url,
        &exchange,
        batch,
        &[("OUTBOX_RELAY_RELAY__REBALANCE_INTERVAL", &rebalance)],
    );
    tokio::time::sleep(STARTUP).await;
    let admin = connect(&format!("{}/postgres", pg_server())).await;
    let mut backends = backend_pids(&admin, name).await;
    let (pg_before, relay_before) = (postgres_cpu(), relay_cpu(relay.id()));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (pg_after, relay_after) = (postgres_cpu(), relay_cpu(relay.id()));
    let wall = started.elapsed().as_secs_f64();
    backends.extend(backend_pids(&admin, name).await);
    if let Ok(Some(status)) = relay.try_wait() {
        eprintln!("   !! the idle relay exited: {status}");
    }
    stop(relay);
    broker_cleanup(&conn, &exchange, &queue).await;
    let percent = |ns: u64| ns as f64 / 1e9 / wall * 100.0;
    let relay_ns = relay_spent(&relay_before, &relay_after);
    Idle {
        backends: percent(spent(&pg_before, &pg_after, Some(&backends))),
        backend_count: backends.iter().filter(|p| pg_after.contains_key(p)).count(),
        all_postgres: percent(spent(&pg_before, &pg_after, None)),
        relay: percent(relay_ns),
    }
}
