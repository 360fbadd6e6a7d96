//! A real Prometheus for the monitoring tests: Debian's `prometheus` binary (installed by
//! `scripts/services.sh`) started on a free port with its own data directory, scraping the
//! given targets every second and evaluating the project's alert rules every second; and a
//! small client for its HTTP API.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::PATIENCE;

/// A running Prometheus, killed (and its data directory removed) on drop.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job `outbox-relay`, every second) with
    /// `config/prometheus-rules.yaml` loaded, and awaits its readiness.
    pub async fn start(targets: &[SocketAddr]) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus-rules.yaml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  - job_name: outbox-relay\n    static_configs:\n      \
             - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus not found: run scripts/services.sh (Debian package prometheus)");
        let prometheus = Self { addr, child, dir };
        let deadline = Instant::now() + PATIENCE;
        while get(addr, "/-/ready").await.map(|(code, _)| code) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// Prometheus's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `result` array (vector) of `/api/v1/query`.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", encode(expr)))
            .await
    }

    /// A range query over `[start, now]` with a one-second step: the `result` array
    /// (matrix) of `/api/v1/query_range`.
    pub async fn query_range(&self, expr: &str, start: SystemTime) -> Vec<Value> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        self.api(&format!(
            "/api/v1/query_range?query={}&start={:.3}&end={:.3}&step=1",
            encode(expr),
            secs(start),
            secs(SystemTime::now()),
        ))
        .await
    }

    /// Awaits an instant query whose first sample's value satisfies `ok`.
    pub async fn await_value(&self, what: &str, expr: &str, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let result = self.query(expr).await;
            if result.iter().any(|s| ok(sample_value(&s["value"]))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({expr} returned {result:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn api(&self, path: &str) -> Vec<Value> {
        let (code, body) = get(self.addr, path).await.expect("prometheus unreachable");
        let doc: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {code} {body}"));
        assert_eq!(doc["status"], "success", "{path}: {body}");
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A sample's value (`[timestamp, "value"]`); Prometheus writes `NaN`, `+Inf`, `-Inf`.
pub fn sample_value(sample: &Value) -> f64 {
    sample[1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn encode(expr: &str) -> String {
    url::form_urlencoded::byte_serialize(expr.as_bytes()).collect()
}

/// `GET path` as HTTP/1.0 (so the body is never chunked); `None` while nothing listens.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response);
    let code = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}
