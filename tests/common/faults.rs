//! Fault injection for tests: a TCP proxy that can cut and refuse connections (a broker or
//! database "outage" for one test only, without touching the shared servers), a publisher
//! wrapper that nacks or hangs on demand, helpers to run the real binary as a child (and read
//! its logs), a steady producer, and delivery-log checks (first-delivery order, duplicates).
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use outbox_relay::{
    broker::{Outcome, PublishError, Publisher},
    event::OutboxEvent,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A TCP proxy on 127.0.0.1:<random> forwarding to `target`. It can cut every connection
/// and refuse new ones (a server that is down), or stall: keep connections open but forward
/// nothing, also on new connections (a server or network that stops answering).
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    /// `true` while bytes flow.
    flow: tokio::sync::watch::Sender<bool>,
    pub accepted: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
    /// Local ports of the proxy's connections to `target` (how the server sees the client).
    upstream: Arc<Mutex<Vec<u16>>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let flow = tokio::sync::watch::Sender::new(true);
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let (up2, gen2, acc2, ref2, flow2, upstream2) = (
            up.clone(),
            generation.clone(),
            accepted.clone(),
            refused.clone(),
            flow.clone(),
            upstream.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound); // refused: closed at once
                    ref2.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                acc2.fetch_add(1, Ordering::SeqCst);
                let cut = gen2.lock().unwrap().clone();
                let (up_flow, down_flow) = (flow2.subscribe(), flow2.subscribe());
                let upstream = upstream2.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    if let Ok(local) = outbound.local_addr() {
                        upstream.lock().unwrap().push(local.port());
                    }
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_read, out_write, up_flow) => {}
                        _ = pump(out_read, in_write, down_flow) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            generation,
            flow,
            accepted,
            refused,
            upstream,
        }
    }

    /// The local ports of every connection the proxy opened to its target so far.
    pub fn upstream_ports(&self) -> Vec<u16> {
        self.upstream.lock().unwrap().clone()
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Keeps connections open (and accepts new ones) but forwards nothing until
    /// [`Proxy::restore`] or [`Proxy::cut`].
    pub fn stall(&self) {
        self.flow.send_replace(false);
    }

    /// Accepts connections and forwards bytes again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.flow.send_replace(true);
    }
}

/// A [`Proxy`] in front of the tests' RabbitMQ (`OUTBOX_TEST_AMQP`), and the AMQP URL that
/// reaches it through the proxy.
pub async fn rabbitmq_proxy() -> (Proxy, String) {
    let mut url = url::Url::parse(&crate::common::amqp_url()).unwrap();
    let server = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5672)
    );
    let target = tokio::net::lookup_host(server)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    (proxy, url.to_string())
}

/// Copies `from` to `to`, holding the bytes back while `flow` is `false`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flow: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if flow.wait_for(|flowing| *flowing).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// What [`Faulty`] does to publishes.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Pass through.
    None,
    /// Nack these events (without sending them).
    Nack(HashSet<Uuid>),
    /// Fail these events with the given error (without sending them); send the rest.
    Fail(std::collections::HashMap<Uuid, PublishError>),
    /// Wait this long, then report a confirm timeout for the whole call (a hung broker).
    Hang(Duration),
    /// Publish for real, then hold the outcomes until the gate is notified.
    HoldAfterConfirm(Arc<tokio::sync::Notify>),
    /// Wait this long, then publish for real (a slow broker: keeps batches in flight).
    Delay(Duration),
}

/// A publisher wrapper that injects faults the real broker cannot produce on demand.
pub struct Faulty<P> {
    inner: P,
    pub fault: Arc<Mutex<Fault>>,
    pub calls: Arc<AtomicUsize>,
}

impl<P> Faulty<P> {
    pub fn new(inner: P) -> (Self, Arc<Mutex<Fault>>) {
        let fault = Arc::new(Mutex::new(Fault::None));
        (
            Self {
                inner,
                fault: fault.clone(),
                calls: Arc::new(AtomicUsize::new(0)),
            },
            fault,
        )
    }
}

impl<P: Publisher> Publisher for Faulty<P> {
    async fn connect(&self) -> Result<(), PublishError> {
        self.inner.connect().await
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = self.fault.lock().unwrap().clone();
        match fault {
            Fault::None => self.inner.publish(events).await,
            Fault::HoldAfterConfirm(gate) => {
                let outcomes = self.inner.publish(events).await;
                gate.notified().await;
                outcomes
            }
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                self.inner.publish(events).await
            }
            Fault::Hang(d) => {
                tokio::time::sleep(d).await;
                vec![Err(PublishError::Timeout); events.len()]
            }
            Fault::Fail(errors) => {
                let pass: Vec<OutboxEvent> = events
                    .iter()
                    .filter(|e| !errors.contains_key(&e.id))
                    .cloned()
                    .collect();
                let mut passed = self.inner.publish(&pass).await.into_iter();
                events
                    .iter()
                    .map(|e| match errors.get(&e.id) {
                        Some(error) => Err(error.clone()),
                        None => passed.next().unwrap(),
                    })
                    .collect()
            }
            Fault::Nack(ids) => {
                let pass: Vec<OutboxEvent> = events
                    .iter()
                    .filter(|e| !ids.contains(&e.id))
                    .cloned()
                    .collect();
                let mut passed = self.inner.publish(&pass).await.into_iter();
                events
                    .iter()
                    .map(|e| {
                        if ids.contains(&e.id) {
                            Err(PublishError::Nacked)
                        } else {
                            passed.next().unwrap()
                        }
                    })
                    .collect()
            }
        }
    }

    fn destination(&self, event: &OutboxEvent) -> String {
        self.inner.destination(event)
    }

    fn lost(&self) -> bool {
        self.inner.lost()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// The real binary as a child process, configured by environment.
pub fn spawn_binary(envs: &[(&str, String)]) -> Child {
    binary_command(envs)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn binary_command(envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTBOX_RELAY_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.env("OUTBOX_RELAY_METRICS__LISTEN", "127.0.0.1:0")
        .env("OUTBOX_RELAY_LOG__LEVEL", "warn")
        .envs(envs.iter().map(|(k, v)| (k, v.as_str())))
        .arg("run")
        .stdout(Stdio::null());
    cmd
}

/// A one-shot command of the real binary (`status`, `migrate`, ...) against `database_url`,
/// with nothing of the developer's environment; returns its output.
pub fn cli(database_url: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTBOX_RELAY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("OUTBOX_RELAY_DATABASE__URL", database_url)
        .args(args)
        .output()
        .unwrap()
}

/// The real binary as a relay that wakes up only on NOTIFY (poll and rescan once an hour,
/// asleep 1 ms after its last work), so a test that sees an event published after the relay
/// slept proves the wake-up path.
pub fn notify_only_relay(database_url: &str, exchange: &str) -> RelayProcess {
    RelayProcess::spawn(&[
        ("OUTBOX_RELAY_DATABASE__URL", database_url.to_owned()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__URL",
            crate::common::amqp_url(),
        ),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            exchange.to_owned(),
        ),
        ("OUTBOX_RELAY_RELAY__MODE", "notify".into()),
        ("OUTBOX_RELAY_RELAY__POLL_INTERVAL", "1h".into()),
        ("OUTBOX_RELAY_RELAY__RESCAN_INTERVAL", "1h".into()),
        ("OUTBOX_RELAY_RELAY__LINGER", "1ms".into()),
        ("OUTBOX_RELAY_RELAY__LINGER_POLL_INTERVAL", "1ms".into()),
    ])
}

/// The real binary as a child, logging JSON at `info`; its log lines are kept (and echoed to
/// the test's stderr) so tests can assert what an operator would see.
pub struct RelayProcess {
    pub child: Child,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl RelayProcess {
    pub fn spawn(envs: &[(&str, String)]) -> Self {
        let mut cmd = binary_command(envs);
        cmd.env("OUTBOX_RELAY_LOG__LEVEL", "info")
            .env("OUTBOX_RELAY_LOG__FORMAT", "json")
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let pid = child.id();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[relay {pid}] {line}");
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        Self { child, logs }
    }

    /// How many log lines carry exactly this message.
    pub fn logged(&self, message: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["message"] == message)
            .count()
    }

    /// Every log line with this message (for field checks).
    pub fn lines(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["message"] == message)
            .cloned()
            .collect()
    }

    /// Every log line with `text` in its message or in any field's string value (for causes
    /// carried in a field, e.g. `error`).
    pub fn lines_containing(&self, text: &str) -> Vec<serde_json::Value> {
        fn mentions(value: &serde_json::Value, text: &str) -> bool {
            match value {
                serde_json::Value::String(s) => s.contains(text),
                serde_json::Value::Array(items) => items.iter().any(|v| mentions(v, text)),
                serde_json::Value::Object(fields) => fields.values().any(|v| mentions(v, text)),
                _ => false,
            }
        }
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| mentions(l, text))
            .cloned()
            .collect()
    }

    /// How many log lines have `text` in their message or in any field's string value.
    pub fn logged_containing(&self, text: &str) -> usize {
        self.lines_containing(text).len()
    }

    /// The address of `/metrics`, `/healthz`, `/readyz` (from the start-up log line).
    pub async fn http_addr(&self) -> SocketAddr {
        let mut addr = None;
        crate::common::eventually("relay serving HTTP", || {
            addr = self
                .lines("serving /metrics, /healthz, /readyz")
                .first()
                .and_then(|l| l["addr"].as_str()?.parse().ok());
            std::future::ready(addr.is_some())
        })
        .await;
        addr.unwrap()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit (up to [`crate::common::PATIENCE`]).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        sigterm(&self.child);
        let deadline = std::time::Instant::now() + crate::common::PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over plain HTTP/1.1; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of an unlabelled metric in a Prometheus text rendering (0 if absent).
pub fn gauge(text: &str, name: &str) -> i64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or(0)
}

/// Writes numbered events (`{"n": 1, 2, ...}` per aggregate) one per transaction, round-robin
/// over `aggregates` aggregates named `<prefix>-<i>`, until stopped.
pub struct Producer {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<usize>,
}

impl Producer {
    pub fn start(url: &str, prefix: &str, aggregates: usize) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        let handle = tokio::spawn(async move {
            let client = crate::common::connect(&url).await;
            let mut i = 0;
            while !token.is_cancelled() {
                let aggregate = format!("{prefix}-{}", i % aggregates);
                let n = i / aggregates + 1;
                crate::common::insert_event(
                    &client,
                    "order",
                    &aggregate,
                    "step",
                    serde_json::json!({ "n": n }),
                )
                .await;
                i += 1;
            }
            i
        });
        Self { stop, handle }
    }

    /// Stops writing; returns the number of events written.
    pub async fn stop(self) -> usize {
        self.stop.cancel();
        self.handle.await.unwrap()
    }
}

/// Inserts `per_aggregate` numbered events for each of `aggregates` aggregates named
/// `<prefix>-<i>` in one statement (write order: n = 1 for all, then n = 2, ...).
pub async fn insert_backlog(
    client: &tokio_postgres::Client,
    prefix: &str,
    aggregates: i64,
    per_aggregate: i64,
) {
    client
        .execute(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', $1::text || '-' || (i % $2::int8), 'step', \
                    jsonb_build_object('n', i / $2::int8 + 1) \
             FROM generate_series(0::int8, $2::int8 * $3::int8 - 1) i ORDER BY i",
            &[&prefix, &aggregates, &per_aggregate],
        )
        .await
        .unwrap();
}

/// Every message in the test queue, in queue order. Call once publishing has stopped: the
/// queue depth (all confirmed messages are enqueued) says how many to expect.
pub async fn drain_queue(broker: &crate::common::TestBroker) -> Vec<crate::common::Received> {
    let (n, _) = broker.queue_state().await;
    let n = n as usize;
    let mut rx = broker.consume().await;
    crate::common::receive_n(&mut rx, n).await
}

/// What a delivery log says about order and duplicates.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Distinct event IDs delivered.
    pub unique: usize,
    /// Deliveries beyond the first, per event ID.
    pub duplicates: HashMap<String, usize>,
}

/// Counts distinct deliveries and duplicates (no order check).
pub fn count_deliveries(messages: &[crate::common::Received]) -> Deliveries {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in messages {
        *seen.entry(m.message_id.clone()).or_insert(0) += 1;
    }
    Deliveries {
        unique: seen.len(),
        duplicates: seen
            .into_iter()
            .filter(|(_, c)| *c > 1)
            .map(|(id, c)| (id, c - 1))
            .collect(),
    }
}

/// Checks that, per aggregate, the *first* delivery of each event follows write order
/// (`n` = 1, 2, 3, ... in the payload) starting after `last[aggregate]`; panics otherwise.
pub fn check_first_deliveries(
    messages: &[crate::common::Received],
    last: &mut HashMap<String, i64>,
) -> Deliveries {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in messages {
        let count = seen.entry(m.message_id.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            continue;
        }
        let aggregate = m.header("x-aggregate-id").unwrap().to_owned();
        let n = serde_json::from_str::<serde_json::Value>(&m.body).unwrap()["n"]
            .as_i64()
            .unwrap();
        let prev = last.insert(aggregate.clone(), n).unwrap_or(0);
        assert_eq!(
            n,
            prev + 1,
            "aggregate {aggregate}: first delivery of {n} after {prev}"
        );
    }
    Deliveries {
        unique: seen.len(),
        duplicates: seen
            .into_iter()
            .filter(|(_, c)| *c > 1)
            .map(|(id, c)| (id, c - 1))
            .collect(),
    }
}

/// Sends SIGTERM to a child.
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Terminates this database's relay connections (pool and LISTEN, not the coordinator).
pub async fn terminate_relay_connections(admin: &tokio_postgres::Client, db: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'outbox-relay' AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// Has RabbitMQ itself close the connections whose client port is in `ports`
/// (`rabbitmqctl close_connection`: the server sends `connection.close` 320
/// CONNECTION_FORCED, as a node that shuts down does). Returns how many were closed.
pub async fn rabbitmq_close_connections(ports: &[u16]) -> usize {
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "peer_port",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .await
        .expect("rabbitmqctl (installed with rabbitmq-server by scripts/services.sh)");
    assert!(listed.status.success(), "{listed:?}");
    let mut closed = 0;
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (Some(pid), Some(port)) = (fields.next(), fields.next()) else {
            continue;
        };
        if port.parse::<u16>().is_ok_and(|p| ports.contains(&p)) {
            let status = tokio::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "closed by the test", "-q"])
                .status()
                .await
                .unwrap();
            assert!(status.success());
            closed += 1;
        }
    }
    closed
}
