//! The relay against a database or broker that refuses it (issue 11): a bounded number of
//! connection attempts (at most 30 between 10 s and 40 s after start, across every connection
//! of the process), the `outbox_connection_attempts_total` counter, the cause named in the
//! log, in `/readyz` and in the operator commands' one-line errors, and signals that still
//! stop the relay when its log output goes to a pipe whose reader has exited.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use common::{
    http::http_get,
    listeners::{AcceptAndClose, Silent, closed_port},
    metrics::sample,
    process::{RelayProcess, exit_and_output, relay_binary_on, send_signal},
    *,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use uuid::Uuid;

/// The contract's window and bound: attempts between 10 s and 40 s after start.
const WINDOW_START: Duration = Duration::from_secs(10);
const WINDOW_END: Duration = Duration::from_secs(40);
const MAX_ATTEMPTS_IN_WINDOW: usize = 30;

/// `relay.shutdown_timeout` for the signal tests; they allow 3x this for the exit (a
/// liveness bound: a relay that ignores the signal never exits at all).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// `database.connect_timeout` for the operator commands.
const CONNECT_TIMEOUT: &str = "2s";

/// Liveness bound for one operator command (they fail at once or after `CONNECT_TIMEOUT`).
const COMMAND_PATIENCE: Duration = Duration::from_secs(30);

/// The operator commands that need the database.
const OPERATOR_COMMANDS: [&[&str]; 5] = [
    &["status"],
    &["dead", "list"],
    &["replay", "--all-dead"],
    &["purge", "--older-than", "1d"],
    &["migrate"],
];

/// A database name that does not exist on the test server.
fn missing_database() -> String {
    format!("no_such_db_{}", Uuid::new_v4().simple())
}

/// `outbox_connection_attempts_total{target, outcome}` in an OpenMetrics rendering, `None`
/// when the series is absent.
fn attempts(metrics: &str, target: &str, outcome: &str) -> Option<u64> {
    let series =
        format!("outbox_connection_attempts_total{{target=\"{target}\",outcome=\"{outcome}\"}}");
    sample(metrics, &series).map(|value| value as u64)
}

/// The counter's value, failing the test when the series is missing.
fn attempts_of(metrics: &str, target: &str, outcome: &str) -> u64 {
    attempts(metrics, target, outcome).unwrap_or_else(|| {
        panic!("no outbox_connection_attempts_total{{target={target},outcome={outcome}}} in:\n{metrics}")
    })
}

/// Sleeps until `after` has passed since `start` (the contract's instants, not a condition).
async fn sleep_until(start: Instant, after: Duration) {
    tokio::time::sleep_until((start + after).into()).await;
}

/// Asserts the relay process has not exited.
fn assert_running(relay: &mut RelayProcess, when: &str) {
    let status = relay.child.try_wait().unwrap();
    assert!(status.is_none(), "relay exited {when}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_accepts_and_closes_gets_at_most_30_attempts_between_10_and_40_s() {
    // GIVEN a "database" that accepts every TCP connection and closes it at once, and the
    // real RabbitMQ
    let database = AcceptAndClose::start().await;
    let broker = TestBroker::new().await;

    // WHEN the relay runs against them for 40 s
    let start = Instant::now();
    let mut relay = RelayProcess::spawn(&[
        (
            "OUTBOX_RELAY_DATABASE__URL",
            format!("postgres://postgres@127.0.0.1:{}/x", database.port),
        ),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
    ]);
    let http = relay.http_addr().await;
    sleep_until(start, WINDOW_END).await;

    // THEN it connected at most 30 times between 10 s and 40 s, is still up and not ready
    let in_window = database.between(start, WINDOW_START, WINDOW_END);
    eprintln!(
        "database accepts: {in_window} between 10 s and 40 s, {} in all",
        database.total()
    );
    assert!(database.total() >= 1, "the relay never tried the database");
    assert!(
        in_window <= MAX_ATTEMPTS_IN_WINDOW,
        "{in_window} connection attempts between 10 s and 40 s (bound: {MAX_ATTEMPTS_IN_WINDOW})"
    );
    assert_running(&mut relay, "while the database refuses it");
    assert_eq!(http_get(http, "/readyz").await.0, 503);

    // AND the counter saw the failed attempts and no successful one
    let metrics = http_get(http, "/metrics").await.1;
    assert!(attempts_of(&metrics, "database", "error") >= 1, "{metrics}");
    assert_eq!(attempts_of(&metrics, "database", "ok"), 0, "{metrics}");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_accepts_and_closes_gets_at_most_30_attempts_between_10_and_40_s() {
    // GIVEN a migrated database and a "RabbitMQ" that accepts every TCP connection and closes
    // it at once
    let db = TestDb::migrated().await;
    let broker = AcceptAndClose::start().await;

    // WHEN the relay runs against them for 40 s
    let start = Instant::now();
    let mut relay = RelayProcess::spawn(&[
        ("OUTBOX_RELAY_DATABASE__URL", db.url.clone()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__URL",
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port),
        ),
    ]);
    let http = relay.http_addr().await;
    sleep_until(start, WINDOW_END).await;

    // THEN it connected at most 30 times between 10 s and 40 s, is still up and not ready
    let in_window = broker.between(start, WINDOW_START, WINDOW_END);
    eprintln!(
        "broker accepts: {in_window} between 10 s and 40 s, {} in all",
        broker.total()
    );
    assert!(broker.total() >= 1, "the relay never tried the broker");
    assert!(
        in_window <= MAX_ATTEMPTS_IN_WINDOW,
        "{in_window} connection attempts between 10 s and 40 s (bound: {MAX_ATTEMPTS_IN_WINDOW})"
    );
    assert_running(&mut relay, "while the broker refuses it");
    assert_eq!(http_get(http, "/readyz").await.0, 503);

    // AND the counter saw the failed broker attempts, and the database's successful ones
    let metrics = http_get(http, "/metrics").await.1;
    assert!(attempts_of(&metrics, "broker", "error") >= 1, "{metrics}");
    assert_eq!(attempts_of(&metrics, "broker", "ok"), 0, "{metrics}");
    assert!(attempts_of(&metrics, "database", "ok") >= 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_with_no_listener_is_counted_not_stormed() {
    // GIVEN a database port where nothing listens, and the real RabbitMQ
    let port = closed_port();
    let broker = TestBroker::new().await;

    // WHEN the relay runs against them
    let start = Instant::now();
    let mut relay = RelayProcess::spawn(&[
        (
            "OUTBOX_RELAY_DATABASE__URL",
            format!("postgres://postgres@127.0.0.1:{port}/x"),
        ),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
    ]);
    let http = relay.http_addr().await;

    // THEN from its first scrape the counter has all four series
    let first = http_get(http, "/metrics").await.1;
    for target in ["database", "broker"] {
        for outcome in ["ok", "error"] {
            assert!(
                attempts(&first, target, outcome).is_some(),
                "no series target={target} outcome={outcome} at start-up:\n{first}"
            );
        }
    }

    // AND between 10 s and 40 s it counts at least one and at most 30 failed attempts
    sleep_until(start, WINDOW_START).await;
    let at_10s = attempts_of(&http_get(http, "/metrics").await.1, "database", "error");
    sleep_until(start, WINDOW_END).await;
    let metrics = http_get(http, "/metrics").await.1;
    let at_40s = attempts_of(&metrics, "database", "error");
    eprintln!("database errors counted: {at_10s} at 10 s, {at_40s} at 40 s");
    let in_window = at_40s - at_10s;
    assert!(
        in_window >= 1,
        "no attempt counted between 10 s and 40 s: {metrics}"
    );
    assert!(
        in_window <= MAX_ATTEMPTS_IN_WINDOW as u64,
        "{in_window} attempts counted between 10 s and 40 s (bound: {MAX_ATTEMPTS_IN_WINDOW})"
    );
    assert_eq!(attempts_of(&metrics, "database", "ok"), 0, "{metrics}");

    // AND it is still up, not ready, and /readyz names the cause with the address
    assert_running(&mut relay, "while nothing listens on the database port");
    let (code, body) = http_get(http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("connection refused"), "{body}");
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_named_in_the_log_the_counter_and_readyz() {
    // GIVEN the real Postgres server, a database name that does not exist on it, and the
    // real RabbitMQ
    let name = missing_database();
    let cause = format!("database \"{name}\" does not exist");
    let broker = TestBroker::new().await;

    // WHEN the relay runs against them
    let mut relay = RelayProcess::spawn(&[
        (
            "OUTBOX_RELAY_DATABASE__URL",
            format!("{}/{name}", pg_server()),
        ),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
    ]);
    let http = relay.http_addr().await;

    // THEN the log names the cause in Postgres' words
    eventually("the log names the missing database", || {
        std::future::ready(relay.logged_containing(&cause) >= 1)
    })
    .await;
    // AND /readyz says 503 with the same words (once the pipeline has tried: the start-up
    // check may log the cause before)
    eventually("/readyz names the missing database", || async {
        let (code, body) = http_get(http, "/readyz").await;
        assert_eq!(code, 503, "{body}");
        body.contains(&cause)
    })
    .await;

    // AND the counter counts the failed attempts, while the cause is logged once per change
    // of state, not once per attempt: each log statement that carries it (start-up check,
    // relay state, or one per connection if the relay logs per connection) says it once
    eventually("several failed attempts counted", || async {
        attempts(&http_get(http, "/metrics").await.1, "database", "error").unwrap_or(0) >= 6
    })
    .await;
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for line in relay.lines_containing(&cause) {
        *per_message
            .entry(line["message"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert!(
        per_message.values().all(|&n| n == 1),
        "the cause was logged repeatedly: {per_message:?}"
    );
    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(attempts_of(&metrics, "database", "ok"), 0, "{metrics}");
    assert_running(&mut relay, "while its database does not exist");
    broker.cleanup().await;
}

/// Runs an operator command against `database_url` (nothing else configured); fails the test
/// if it does not finish within [`COMMAND_PATIENCE`]. Returns (exit code, stdout, stderr).
async fn operator(args: &[&str], database_url: &str) -> (i32, String, String) {
    let mut cmd = Command::from(relay_binary_on(database_url));
    cmd.env("OUTBOX_RELAY_DATABASE__CONNECT_TIMEOUT", CONNECT_TIMEOUT)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`{}` did not finish", args.join(" ")))
        .unwrap();
    exit_and_output(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_name_a_missing_database_and_exit_1() {
    // GIVEN the real Postgres server and a database name that does not exist on it
    let name = missing_database();
    let url = format!("{}/{name}", pg_server());
    let cause = format!("database \"{name}\" does not exist");
    for args in OPERATOR_COMMANDS {
        // WHEN an operator command runs against it
        let (code, _, stderr) = operator(args, &url).await;

        // THEN it exits 1 and says why in Postgres' words
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains(&cause), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_name_a_refused_connection_and_exit_1() {
    // GIVEN a database port where nothing listens
    let url = format!("postgres://postgres@127.0.0.1:{}/x", closed_port());
    for args in OPERATOR_COMMANDS {
        // WHEN an operator command runs against it
        let (code, _, stderr) = operator(args, &url).await;

        // THEN it exits 1 and says the connection was refused
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.to_lowercase().contains("connection refused"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_connect_once_and_do_not_retry() {
    // GIVEN a "database" that accepts every connection and closes it at once
    let database = AcceptAndClose::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/x", database.port);
    for args in OPERATOR_COMMANDS {
        // WHEN an operator command runs against it
        let before = database.total();
        let (code, _, stderr) = operator(args, &url).await;

        // THEN it exits 1 with a message, after a single connection attempt
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(!stderr.trim().is_empty(), "{args:?}: no message");
        assert_eq!(database.total() - before, 1, "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_give_up_on_a_silent_database_after_the_connect_timeout() {
    // GIVEN a "database" that accepts connections and never answers
    let database = Silent::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/x", database.port);
    for args in OPERATOR_COMMANDS {
        // WHEN an operator command runs against it with database.connect_timeout = 2 s
        let before = database.total();
        let (code, _, stderr) = operator(args, &url).await;

        // THEN it gives up (within the liveness bound), exits 1 and says it timed out, after
        // a single connection attempt
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.to_lowercase().contains("timed out"),
            "{args:?}: {stderr}"
        );
        assert_eq!(database.total() - before, 1, "{args:?}: {stderr}");
    }
}

/// The state the relay is in when it gets the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Real Postgres (migrated) and real RabbitMQ: connected and publishing.
    Healthy,
    /// The real Postgres server with a database that does not exist.
    DatabaseRefused,
}

/// Waits until `/readyz` on `addr` answers `code`; fails if the relay exits first.
async fn await_readyz(child: &mut Child, addr: SocketAddr, code: u16) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("relay exited (its log pipe closed) before /readyz answered {code}: {status:?}");
        }
        if TcpStream::connect(addr).await.is_ok() && http_get(addr, "/readyz").await.0 == code {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz never answered {code}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the relay with stdout and stderr on pipes, reads its first log lines, closes the read
/// ends (`outbox-relay run 2>&1 | head -3`), lets it run on in `state`, then sends `signal`:
/// returns its exit status, failing if it has not exited within 3x `relay.shutdown_timeout`.
async fn stop_with_closed_log_pipe(state: State, signal: &str) -> ExitStatus {
    // GIVEN a relay in `state`, logging at debug, whose log reader reads a few lines and exits
    let healthy = state == State::Healthy;
    let db = if healthy {
        Some(TestDb::migrated().await)
    } else {
        None
    };
    let database_url = match &db {
        Some(db) => db.url.clone(),
        None => format!("{}/{}", pg_server(), missing_database()),
    };
    let broker = TestBroker::bound().await;
    let http: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let mut cmd = Command::from(relay_binary_on(&database_url));
    cmd.env("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url())
        .env("OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE", &broker.exchange)
        .env("OUTBOX_RELAY_METRICS__LISTEN", http.to_string())
        .env("OUTBOX_RELAY_LOG__LEVEL", "debug")
        .env(
            "OUTBOX_RELAY_RELAY__SHUTDOWN_TIMEOUT",
            format!("{}s", SHUTDOWN_TIMEOUT.as_secs()),
        )
        .env("OUTBOX_RELAY_RELAY__POLL_INTERVAL", "100ms")
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for _ in 0..3 {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("no log line")
            .unwrap()
            .expect("log closed");
        eprintln!("[relay] {line}");
    }
    drop(lines);

    // WHEN it keeps running (and logging) with nobody reading its output
    if let Some(db) = &db {
        await_readyz(&mut child, http, 200).await;
        // A published event proves the pipeline works on (and logs at debug as it does).
        let client = db.client().await;
        db.insert(&client, "after-close", "created").await;
        eventually("the event is dispatched", || async {
            db.count(&client, "dispatched").await == 1
        })
        .await;
    } else {
        await_readyz(&mut child, http, 503).await;
        // Its reconnect loop fails (and logs) on, with nobody reading (a moment, not a
        // condition: nothing observable says a log write failed).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let status = child.try_wait().unwrap();
    assert!(
        status.is_none(),
        "{state:?}: the relay exited with its log pipe closed: {status:?}"
    );

    // THEN the signal stops it within the drain budget
    send_signal(child.id().unwrap(), signal);
    let status = tokio::time::timeout(SHUTDOWN_TIMEOUT * 3, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{state:?}: no exit within {:?} of SIG{signal} with the log pipe closed",
                SHUTDOWN_TIMEOUT * 3
            )
        })
        .unwrap();
    broker.cleanup().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_a_healthy_relay_whose_log_pipe_is_closed() {
    let status = stop_with_closed_log_pipe(State::Healthy, "INT").await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_healthy_relay_whose_log_pipe_is_closed() {
    let status = stop_with_closed_log_pipe(State::Healthy, "TERM").await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_a_relay_refused_by_its_database_whose_log_pipe_is_closed() {
    let status = stop_with_closed_log_pipe(State::DatabaseRefused, "INT").await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_relay_refused_by_its_database_whose_log_pipe_is_closed() {
    let status = stop_with_closed_log_pipe(State::DatabaseRefused, "TERM").await;
    assert!(status.success(), "{status:?}");
}
