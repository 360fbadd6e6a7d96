//! Configuration: figment layering (built-in defaults -> TOML file -> `OUTBOX_RELAY_*` env),
//! validation that names the offending key, and secret redaction for display.
//!
//! Every key has a default that works against the local services the quick start (`scripts/demo.sh`)
//! brings up, so `outbox-relay run` with no file is a valid local setup.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::{broker::routing::RoutingTemplate, store::TableName};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "OUTBOX_RELAY_";

/// A configuration problem. `key` is the dotted path of the offending key (empty if the
/// problem is the file itself).
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", if key.is_empty() { String::new() } else { format!("config key `{key}`: ") })]
pub struct ConfigError {
    /// Dotted key path, e.g. `relay.batch_size`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// The whole configuration, one struct per TOML section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the outbox lives.
    pub database: DatabaseConfig,
    /// The pipeline: wake-up, batching, shutdown.
    pub relay: RelayConfig,
    /// Retry and dead-letter policy for per-event failures.
    pub retry: RetryConfig,
    /// Which broker to publish to and how.
    pub broker: BrokerConfig,
    /// The HTTP server for metrics and health probes.
    pub metrics: MetricsConfig,
    /// How long dispatched rows are kept.
    pub retention: RetentionConfig,
    /// The consumers' inbox (`migrate --inbox`, `purge --inbox`), in the consumer's database.
    pub inbox: InboxConfig,
    /// Log output.
    pub log: LogConfig,
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// libpq-style URL; `sslmode=require|verify-ca|verify-full` turns on TLS (rustls).
    pub url: String,
    /// Outbox table, optionally schema-qualified (`schema.table`).
    pub table: String,
    /// Connections in the pool used for claiming and settling (the LISTEN connection is extra).
    pub pool_size: usize,
    /// PEM file with extra CA certificates trusted for TLS (managed Postgres services).
    pub ca_file: Option<PathBuf>,
    /// Timeout for establishing a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// File holding the password (a mounted Secret), used instead of the URL's and read
    /// again for every new connection, so a rotated password needs no restart.
    pub password_file: Option<PathBuf>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            table: "outbox_events".into(),
            pool_size: 8,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            password_file: None,
        }
    }
}

/// How the relay learns about new rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// LISTEN/NOTIFY wake-ups plus a fallback poll every `poll_interval`.
    Notify,
    /// Poll every `poll_interval` only.
    Poll,
}

/// `[relay]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// `notify` or `poll`.
    pub mode: RelayMode,
    /// Poll period (in notify mode: the fallback poll).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Rows per read of the backlog, and at most this many events per publish call.
    pub batch_size: usize,
    /// Deprecated: the number of publish calls in flight. Read as `publish_channels` when
    /// set (with a warning at start-up); see `publish_channels` and `max_in_flight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_batches: Option<usize>,
    /// Unconfirmed messages at the broker at most: the confirm window, refilled as confirms
    /// arrive, shared by all aggregates (each has at most one event in it).
    pub max_in_flight: usize,
    /// Publish calls in flight at once, each on its own confirm channel (RabbitMQ) or its own
    /// set of `SendMessageBatch` calls (SQS); the window is spread over them.
    pub publish_channels: usize,
    /// Events held in memory at most: read ahead of publishing, in flight, and confirmed but
    /// not yet marked. Bounds the relay's memory on deep backlogs.
    pub max_pending_in_memory: usize,
    /// How often rows at or before the read cursor are looked for again (late commits,
    /// replayed events). Each rescan reads the pending rows before the cursor once, in
    /// batches; that is about what the relay holds in memory, not the backlog.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// After the last work seen, keep polling every `linger_poll_interval` for this long before
    /// declaring the relay idle (producers only pay for a NOTIFY while the relay is idle).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Poll period while lingering.
    #[serde(with = "humantime_serde")]
    pub linger_poll_interval: Duration,
    /// How long the broker may take to confirm a batch before the broker is considered down.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Upper bound for the drain on SIGTERM; keep it below the pod's grace period.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Hash buckets aggregates are split into across replicas (all replicas must agree).
    pub buckets: u32,
    /// How often a replica counts its peers and rebalances bucket ownership.
    #[serde(with = "humantime_serde")]
    pub rebalance_interval: Duration,
    /// Ownership lease: without a successful coordination round trip for this long, the
    /// replica stops claiming.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            mode: RelayMode::Notify,
            poll_interval: Duration::from_secs(1),
            batch_size: 500,
            max_inflight_batches: None,
            max_in_flight: 5000,
            publish_channels: 8,
            max_pending_in_memory: 20_000,
            rescan_interval: Duration::from_secs(5),
            linger: Duration::from_millis(200),
            linger_poll_interval: Duration::from_millis(5),
            publish_timeout: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(20),
            buckets: 64,
            rebalance_interval: Duration::from_secs(2),
            lease_timeout: Duration::from_secs(6),
        }
    }
}

/// `[retry]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Smallest delay before a failed event is retried.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest delay before a failed event is retried.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Failed attempts after which an event becomes `dead`.
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_attempts: 10,
        }
    }
}

/// Which broker backend is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// RabbitMQ over AMQP 0-9-1 (lapin).
    Rabbitmq,
    /// AWS SQS (aws-sdk-sqs).
    Sqs,
}

/// `[broker]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `rabbitmq` or `sqs`.
    pub kind: BrokerKind,
    /// `[broker.rabbitmq]`
    pub rabbitmq: RabbitMqConfig,
    /// `[broker.sqs]`
    pub sqs: SqsConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Rabbitmq,
            rabbitmq: RabbitMqConfig::default(),
            sqs: SqsConfig::default(),
        }
    }
}

/// `[broker.rabbitmq]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqConfig {
    /// `amqp://` or `amqps://` URL (credentials are redacted in logs).
    pub url: String,
    /// Durable topic exchange the relay publishes to (declared if missing).
    pub exchange: String,
    /// Routing key template: `{aggregate_type}`, `{aggregate_id}`, `{event_type}`.
    pub routing_key: String,
    /// PEM file with CA certificates trusted for `amqps://`.
    pub ca_file: Option<PathBuf>,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "outbox".into(),
            routing_key: "{aggregate_type}.{event_type}".into(),
            ca_file: None,
        }
    }
}

/// `[broker.sqs]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsConfig {
    /// Default destination queue (a `.fifo` URL selects FIFO semantics).
    pub queue_url: String,
    /// AWS region; empty means the standard AWS chain decides.
    pub region: Option<String>,
    /// Custom endpoint (emulators, VPC endpoints).
    pub endpoint_url: Option<String>,
    /// Per aggregate type destination queues, overriding `queue_url`.
    pub routes: BTreeMap<String, String>,
    /// Largest message (body + attributes) the relay sends; larger events go dead at once.
    pub max_message_bytes: usize,
}

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            queue_url: String::new(),
            region: None,
            endpoint_url: None,
            routes: BTreeMap::new(),
            max_message_bytes: 1024 * 1024,
        }
    }
}

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
    pub table: String,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            table: "outbox_inbox".into(),
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

impl RelayConfig {
    /// Publish calls in flight at once: `publish_channels`, or the deprecated
    /// `max_inflight_batches` when a config still sets it.
    pub fn channels(&self) -> usize {
        self.max_inflight_batches.unwrap_or(self.publish_channels)
    }

    /// Deprecation notices for keys that still load but should be replaced.
    pub fn deprecations(&self) -> Vec<&'static str> {
        let mut notes = Vec::new();
        if self.max_inflight_batches.is_some() {
            notes.push(
                "config key `relay.max_inflight_batches` is deprecated: it now sets \
                 `relay.publish_channels` (publish calls in flight); the confirm window is \
                 `relay.max_in_flight`",
            );
        }
        notes
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then `OUTBOX_RELAY_*` environment variables, and
    /// validates the result.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::new(
                    "",
                    format!("config file {} does not exist", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(env_provider());
        Self::from_figment(figment)
    }

    /// Extracts and validates a config from any figment (used by tests with inline TOML).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-field rules and values serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        TableName::parse(&self.database.table)
            .map_err(|e| ConfigError::new("database.table", e.to_string()))?;
        TableName::parse(&self.inbox.table)
            .map_err(|e| ConfigError::new("inbox.table", e.to_string()))?;
        crate::store::connect::parse_url(&self.database.url)
            .map_err(|e| ConfigError::new("database.url", e.to_string()))?;
        positive(self.database.pool_size, "database.pool_size")?;
        positive(self.relay.batch_size, "relay.batch_size")?;
        if self.relay.batch_size > 10_000 {
            return Err(ConfigError::new(
                "relay.batch_size",
                "must be at most 10000",
            ));
        }
        if let Some(batches) = self.relay.max_inflight_batches {
            positive(batches, "relay.max_inflight_batches")?;
        }
        positive(self.relay.max_in_flight, "relay.max_in_flight")?;
        positive(self.relay.publish_channels, "relay.publish_channels")?;
        if self.relay.publish_channels > 256 {
            return Err(ConfigError::new(
                "relay.publish_channels",
                "must be at most 256",
            ));
        }
        if self.relay.max_pending_in_memory < self.relay.batch_size {
            return Err(ConfigError::new(
                "relay.max_pending_in_memory",
                "must be at least relay.batch_size",
            ));
        }
        nonzero(self.relay.rescan_interval, "relay.rescan_interval")?;
        nonzero(self.relay.poll_interval, "relay.poll_interval")?;
        nonzero(
            self.relay.linger_poll_interval,
            "relay.linger_poll_interval",
        )?;
        nonzero(self.relay.publish_timeout, "relay.publish_timeout")?;
        nonzero(self.relay.shutdown_timeout, "relay.shutdown_timeout")?;
        if !(1..=65_535).contains(&self.relay.buckets) {
            return Err(ConfigError::new(
                "relay.buckets",
                "must be between 1 and 65535",
            ));
        }
        nonzero(self.relay.rebalance_interval, "relay.rebalance_interval")?;
        if self.relay.lease_timeout <= self.relay.rebalance_interval {
            return Err(ConfigError::new(
                "relay.lease_timeout",
                "must be longer than relay.rebalance_interval",
            ));
        }
        nonzero(self.retry.initial_backoff, "retry.initial_backoff")?;
        if self.retry.max_backoff < self.retry.initial_backoff {
            return Err(ConfigError::new(
                "retry.max_backoff",
                "must be at least retry.initial_backoff",
            ));
        }
        positive(self.retry.max_attempts as usize, "retry.max_attempts")?;
        nonzero(self.metrics.refresh_interval, "metrics.refresh_interval")?;
        nonzero(self.retention.interval, "retention.interval")?;
        positive(self.retention.batch_size, "retention.batch_size")?;
        match self.broker.kind {
            BrokerKind::Rabbitmq => {
                let r = &self.broker.rabbitmq;
                if !(r.url.starts_with("amqp://") || r.url.starts_with("amqps://")) {
                    return Err(ConfigError::new(
                        "broker.rabbitmq.url",
                        "must start with amqp:// or amqps://",
                    ));
                }
                if r.exchange.is_empty() || r.exchange.len() > 255 {
                    return Err(ConfigError::new(
                        "broker.rabbitmq.exchange",
                        "must be 1 to 255 characters",
                    ));
                }
                RoutingTemplate::parse(&r.routing_key)
                    .map_err(|e| ConfigError::new("broker.rabbitmq.routing_key", e.to_string()))?;
            }
            BrokerKind::Sqs => {
                let s = &self.broker.sqs;
                if s.queue_url.is_empty() && s.routes.is_empty() {
                    return Err(ConfigError::new(
                        "broker.sqs.queue_url",
                        "is required when broker.kind = \"sqs\"",
                    ));
                }
                positive(s.max_message_bytes, "broker.sqs.max_message_bytes")?;
            }
        }
        Ok(())
    }

    /// The configuration as TOML with secrets (passwords in URLs) replaced by `***`.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        shown.broker.rabbitmq.url = redact_url(&shown.broker.rabbitmq.url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Environment provider: `OUTBOX_RELAY_RELAY__BATCH_SIZE=100` sets `relay.batch_size`.
/// `OUTBOX_RELAY_CONFIG` names the file and is not a key.
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__")
}

fn positive(value: usize, key: &str) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

fn nonzero(value: Duration, key: &str) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

fn figment_error(error: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = error.path.clone();
    let message = match &error.kind {
        Kind::UnknownField(field, _) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            "unknown key".to_owned()
        }
        Kind::MissingField(field) => {
            if path.last().map(String::as_str) != Some(field.as_ref()) {
                path.push(field.to_string());
            }
            "missing key".to_owned()
        }
        kind => kind.to_string(),
    };
    let origin = error
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    ConfigError::new(&path.join("."), format!("{message}{origin}"))
}

/// Replaces the password in a URL with `***`; leaves URLs without credentials untouched.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => redact_password_param(raw),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Redacts a `password=` query parameter (libpq also accepts the password that way).
fn redact_password_param(raw: &str) -> String {
    match raw.split_once('?') {
        Some((base, query)) => {
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| {
                    if kv.to_ascii_lowercase().starts_with("password=") {
                        "password=***".to_owned()
                    } else {
                        kv.to_owned()
                    }
                })
                .collect();
            format!("{base}?{}", parts.join("&"))
        }
        None => raw.to_owned(),
    }
}

impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayMode::Notify => "notify",
            RelayMode::Poll => "poll",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = from_toml("[relay]\nbatch_sise = 3\n").unwrap_err();
        assert_eq!(err.key, "relay.batch_sise");
        assert!(err.to_string().contains("unknown key"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = from_toml("[relay]\npoll_interval = \"soon\"\n").unwrap_err();
        assert_eq!(err.key, "relay.poll_interval");
    }

    #[test]
    fn unknown_broker_kind_is_named() {
        let err = from_toml("[broker]\nkind = \"kafka\"\n").unwrap_err();
        assert_eq!(err.key, "broker.kind");
    }

    #[test]
    fn unknown_status_page_is_named() {
        let err = from_toml("[metrics]\nstatus_page = \"full\"\n").unwrap_err();
        assert_eq!(err.key, "metrics.status_page");
        let config = from_toml("[metrics]\nstatus_page = \"details\"\n").unwrap();
        assert_eq!(config.metrics.status_page, StatusPage::Details);
    }

    #[test]
    fn bad_table_is_named() {
        let err = from_toml("[inbox]\ntable = \"Inbox\"\n").unwrap_err();
        assert_eq!(err.key, "inbox.table");
        assert_eq!(from_toml("").unwrap().inbox.table, "outbox_inbox");
        let err = from_toml("[database]\ntable = \"x; drop table y\"\n").unwrap_err();
        assert_eq!(err.key, "database.table");
    }

    #[test]
    fn zero_batch_is_rejected() {
        let err = from_toml("[relay]\nbatch_size = 0\n").unwrap_err();
        assert_eq!(err.key, "relay.batch_size");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?password=secret&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        let mut config = Config::default();
        config.database.url = "postgres://app:hunter2@db/app".into();
        assert!(!config.redacted_toml().contains("hunter2"));
    }
}
