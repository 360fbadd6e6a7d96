//! The one way tests launch the `outbox-relay` binary, always without the developer's
//! environment: one-shot commands (`status`, `migrate`, `replay`, ...) and their output, the
//! relay as a child process (its JSON log kept for assertions; the notify-only relay),
//! signals; and the examples built next to it.

use std::{
    net::SocketAddr,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{PATIENCE, amqp_url, eventually};

/// The `outbox-relay` binary of this build with nothing of the developer's environment (no
/// `OUTBOX_RELAY_*` variable, no `RUST_LOG`): every launch in the tests starts here (an async
/// child: `tokio::process::Command::from` it).
pub fn relay_binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTBOX_RELAY_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// [`relay_binary`] configured only by `OUTBOX_RELAY_DATABASE__URL`.
pub fn relay_binary_on(database_url: &str) -> Command {
    let mut cmd = relay_binary();
    cmd.env("OUTBOX_RELAY_DATABASE__URL", database_url);
    cmd
}

/// A one-shot command of the real binary (`status`, `migrate`, ...) against `database_url`;
/// returns its output.
pub fn cli(database_url: &str, args: &[&str]) -> Output {
    relay_binary_on(database_url).args(args).output().unwrap()
}

/// Runs `cmd` to its end: (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    exit_and_output(cmd.output().unwrap())
}

/// A finished command's (exit code, stdout, stderr); -1 for an exit by signal.
pub fn exit_and_output(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status --json` against `database_url`, parsed (asserting exit 0).
pub fn status_json(database_url: &str) -> serde_json::Value {
    let (code, stdout, stderr) = run(relay_binary_on(database_url).args(["status", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// The real binary as a child process, configured by environment.
pub fn spawn_binary(envs: &[(&str, String)]) -> Child {
    binary_command(envs)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// `outbox-relay run` with an ops port of its own, logging at `warn`, configured by `envs`.
fn binary_command(envs: &[(&str, String)]) -> Command {
    let mut cmd = relay_binary();
    cmd.env("OUTBOX_RELAY_METRICS__LISTEN", "127.0.0.1:0")
        .env("OUTBOX_RELAY_LOG__LEVEL", "warn")
        .envs(envs.iter().map(|(k, v)| (k, v.as_str())))
        .arg("run")
        .stdout(Stdio::null());
    cmd
}

/// The real binary as a relay that wakes up only on NOTIFY (poll and rescan once an hour,
/// asleep 1 ms after its last work), so a test that sees an event published after the relay
/// slept proves the wake-up path.
pub fn notify_only_relay(database_url: &str, exchange: &str) -> RelayProcess {
    RelayProcess::spawn(&[
        ("OUTBOX_RELAY_DATABASE__URL", database_url.to_owned()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
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
        eventually("relay serving HTTP", || {
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

    /// SIGTERM, then waits for the exit (up to [`PATIENCE`]).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        sigterm(&self.child);
        let deadline = std::time::Instant::now() + PATIENCE;
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

/// Sends SIGTERM to a child.
pub fn sigterm(child: &Child) {
    send_signal(child.id(), "TERM");
}

/// Sends `signal` (`TERM`, `INT`, ...) to the process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// An example's binary next to the outbox-relay binary of this build
/// (`target/<profile>/examples/<name>`). nextest does not build examples: `scripts/test.sh`
/// (and `scripts/bench-inbox.sh`, for release) build the ones tests and benchmarks run.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let relay = std::path::PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay"));
    let path = relay.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo build [--release] --example {name}",
        path.display()
    );
    path
}
