//! The connection gate: every connection the relay opens to Postgres (pool, LISTEN,
//! coordination, and through the pool the gauges, retention and the idle protocol) goes
//! through one [`Gate`], so a database that refuses connections sees a bounded trickle of
//! attempts, whoever asks.
//!
//! While connections succeed the gate is open and attempts run concurrently. After a failed
//! attempt it closes: the next attempt waits out a capped, jittered exponential backoff
//! ([`ReconnectBackoff`]: 250 ms doubling to 30 s) and attempts run one at a time, each failure
//! growing the delay. Only a successful connection opens it again; a wake-up, a retry loop of
//! a caller or another component's success cannot cut the wait short. The gate also keeps the
//! last failure in words an operator can act on (for logs and `/readyz`) and counts attempts
//! (`outbox_connection_attempts_total{target="database"}`).

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::backoff::ReconnectBackoff;

/// Counters for the outcomes of connection attempts.
#[derive(Debug, Clone, Default)]
pub struct AttemptCounters {
    /// Attempts that produced a usable connection.
    pub ok: Counter,
    /// Attempts that failed.
    pub error: Counter,
}

/// Shared by every clone of a [`super::connect::Connector`].
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Held by the one attempt allowed at a time while the gate is closed.
    probe: tokio::sync::Mutex<()>,
    /// Wakes waiters when an attempt succeeded (the gate opened).
    opened: tokio::sync::Notify,
    counters: Mutex<AttemptCounters>,
}

#[derive(Debug, Default)]
struct State {
    /// `Some` while closed: no attempt before this instant.
    not_before: Option<Instant>,
    backoff: ReconnectBackoff,
    /// Why the last attempt failed (cleared on success).
    last_error: Option<String>,
}

impl Gate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts attempts into `counters` from now on.
    pub fn count_into(&self, counters: AttemptCounters) {
        *self
            .0
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = counters;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Why the last attempt failed, while the gate is closed.
    pub fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    /// Whether the last attempt failed.
    pub fn closed(&self) -> bool {
        self.state().not_before.is_some()
    }

    /// Waits until an attempt would be allowed (the gate is open or its backoff has passed),
    /// without making one: lets a caller bound the attempt itself with a timeout.
    pub async fn turn(&self) {
        loop {
            let Some(at) = self.state().not_before else {
                return;
            };
            if Instant::now() >= at {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.0.opened.notified() => {}
            }
        }
    }

    /// Runs one connection attempt through the gate: waits while it is closed, then runs
    /// `connect` and records its outcome, described by `describe` on failure. Cancel-safe:
    /// dropping the future while it waits makes no attempt.
    pub async fn attempt<T, E, F>(
        &self,
        connect: F,
        describe: impl FnOnce(&E) -> String,
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let _probe = loop {
            if !self.closed() {
                break None;
            }
            let guard = self.0.probe.lock().await;
            let not_before = self.state().not_before;
            match not_before {
                None => break None, // opened while we queued
                Some(at) if Instant::now() >= at => break Some(guard),
                Some(at) => {
                    drop(guard);
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.0.opened.notified() => {}
                    }
                }
            }
        };
        let result = connect.await;
        let counters = self
            .0
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        match &result {
            Ok(_) => {
                counters.ok.inc();
                let was_closed = {
                    let mut state = self.state();
                    state.backoff.reset();
                    state.last_error = None;
                    state.not_before.take().is_some()
                };
                if was_closed {
                    self.0.opened.notify_waiters();
                }
            }
            Err(error) => {
                counters.error.inc();
                let cause = describe(error);
                let mut state = self.state();
                let delay = state.backoff.next_delay();
                state.not_before = Some(Instant::now() + delay);
                state.last_error = Some(cause);
            }
        }
        result
    }
}

/// `host:port` of the first host in `config` (what an operator needs to find the server).
pub fn target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// A connection failure in words an operator can act on: the server's own message
/// (`database "x" does not exist`, `password authentication failed for user "relay"`), or
/// what happened on the network with the address (`connection refused (10.0.0.5:5432)`,
/// `timed out connecting to 10.0.0.5:5432 after 5 s`).
pub fn describe(error: &tokio_postgres::Error, target: &str, timeout: Duration) -> String {
    if let Some(db) = error.as_db_error() {
        return db.message().to_owned();
    }
    if let Some(words) = crate::tls::describe(error, target) {
        return words;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return match io.kind() {
                ConnectionRefused => format!("connection refused ({target})"),
                TimedOut => timed_out(target, timeout),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                    format!("the server closed the connection during start-up ({target})")
                }
                _ => format!("{io} ({target})"),
            };
        }
        source = cause.source();
    }
    if error.is_closed() {
        return format!("the server closed the connection during start-up ({target})");
    }
    if error.to_string().starts_with("timeout") {
        return timed_out(target, timeout);
    }
    format!("{error} ({target})")
}

/// `timed out connecting to host:port after N s`.
pub fn timed_out(target: &str, timeout: Duration) -> String {
    format!(
        "timed out connecting to {target} after {}",
        humantime::format_duration(timeout)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_spaces_attempts_and_only_success_opens_it() {
        let gate = Gate::new();
        let counters = AttemptCounters::default();
        gate.count_into(counters.clone());
        let start = Instant::now();
        let mut times = Vec::new();
        // Eight failures in a row: each waits out a growing delay.
        for _ in 0..8 {
            let _ = gate
                .attempt(async { Err::<(), _>("refused") }, |e| e.to_string())
                .await;
            times.push(start.elapsed());
        }
        assert_eq!(counters.error.get(), 8);
        assert_eq!(gate.last_error().as_deref(), Some("refused"));
        assert!(
            times[0] < Duration::from_millis(1),
            "the first attempt is not delayed"
        );
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= Duration::from_millis(125), "{gaps:?}");
        assert!(gaps[6] >= Duration::from_secs(8), "{gaps:?}");
        // A success opens it: the next attempt runs at once.
        gate.attempt(async { Ok::<_, &str>(()) }, |e| e.to_string())
            .await
            .unwrap();
        assert!(!gate.closed() && gate.last_error().is_none());
        let before = Instant::now();
        let _ = gate
            .attempt(async { Err::<(), _>("again") }, |e| e.to_string())
            .await;
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert_eq!(counters.ok.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_of_a_closed_gate_take_turns() {
        let gate = Gate::new();
        let _ = gate
            .attempt(async { Err::<(), _>("refused") }, |e| e.to_string())
            .await;
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (gate, attempts) = (gate.clone(), attempts.clone());
            tasks.push(tokio::spawn(async move {
                let _ = gate
                    .attempt(
                        async {
                            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Err::<(), _>("refused")
                        },
                        |e| e.to_string(),
                    )
                    .await;
            }));
        }
        // Ten callers, but within the first 10 s of backoff only a handful of attempts run.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let made = attempts.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=6).contains(&made), "{made} attempts in 10 s");
        for task in tasks {
            task.abort();
        }
    }
}
