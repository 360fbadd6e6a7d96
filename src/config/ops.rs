//! The operator's sections: `[metrics]` (HTTP server, status page), `[retention]`,
//! `[inbox]` and `[log]`.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::TableName;

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP server serving `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// How often the table-derived gauges (backlog, ages) are refreshed.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// `/healthz` fails when eligible events exist and nothing was settled for this long.
    #[serde(with = "humantime_serde")]
    pub wedged_after: Duration,
    /// What `GET /` and `GET /status.json` serve: `off`, `summary` (counts, ages, state) or
    /// `details` (also the latest dead events: id, type, attempts, last error).
    pub status_page: StatusPage,
}

/// `metrics.status_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusPage {
    /// No page: `/` and `/status.json` answer 404.
    Off,
    /// Counts, ages, time to drain, buckets, database and broker state, version.
    #[default]
    Summary,
    /// The summary plus the latest dead events (never their payload).
    Details,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            refresh_interval: Duration::from_secs(5),
            wedged_after: Duration::from_secs(300),
            status_page: StatusPage::Summary,
        }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Dispatched rows older than this are deleted; `0s` deletes rows on dispatch.
    #[serde(with = "humantime_serde")]
    pub dispatched: Duration,
    /// How often the background purge runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per purge statement (small batches keep locks and WAL bursts short).
    pub batch_size: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            dispatched: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(60),
            batch_size: 1000,
        }
    }
}

/// `[inbox]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Inbox table, optionally schema-qualified (`schema.table`): the message IDs consumers
    /// have processed ([`crate::inbox`]).
    pub table: TableName,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            table: TableName::parse("outbox_inbox").expect("the default inbox name is valid"),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `outbox_relay=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}
