//! Configuration: figment layering (built-in defaults -> TOML file -> `OUTBOX_RELAY_*` env)
//! into typed values, validation that names the offending key, and secret redaction for
//! display. One file per section (`database`, `relay`, `broker`, `ops`); values that need
//! parsing (the table names, the database URL, the routing template) are parsed while
//! deserializing, once, into the types the rest of the code receives ([`TableName`],
//! [`DatabaseUrl`], [`RoutingTemplate`]). `validate` holds the rules across keys.
//!
//! This module sits below `store/`, `broker/`, `relay/` and `ops/`: it imports only
//! [`crate::event`].
//!
//! Every key has a default that works against the local services the quick start (`scripts/demo.sh`)
//! brings up, so `outbox-relay run` with no file is a valid local setup.

mod broker;
mod database;
mod ops;
mod redact;
mod relay;
mod routing;
mod table;
mod validate;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

pub use broker::{BrokerConfig, BrokerKind, RabbitMqConfig, SqsConfig};
pub use database::{DatabaseConfig, DatabaseUrl, InvalidUrl, PgTarget, TlsMode};
pub use ops::{InboxConfig, LogConfig, LogFormat, MetricsConfig, RetentionConfig, StatusPage};
pub use redact::redact_url;
pub use relay::{RelayConfig, RelayMode, RetryConfig};
pub use routing::{RoutingTemplate, TemplateError};
pub use table::{InvalidTableName, TableName};

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

    /// The configuration as TOML with secrets (passwords in URLs) replaced by `***`.
    pub fn redacted_toml(&self) -> String {
        let mut shown = match toml::Table::try_from(self) {
            Ok(table) => table,
            Err(e) => return format!("# cannot render: {e}"),
        };
        let mut redact = |section: &[&str], url: &str| {
            let mut table = &mut shown;
            for key in section {
                match table.get_mut(*key).and_then(toml::Value::as_table_mut) {
                    Some(inner) => table = inner,
                    None => return,
                }
            }
            table.insert("url".into(), toml::Value::String(redact_url(url)));
        };
        redact(&["database"], self.database.url.as_str());
        redact(&["broker", "rabbitmq"], &self.broker.rabbitmq.url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Environment provider: `OUTBOX_RELAY_RELAY__BATCH_SIZE=100` sets `relay.batch_size`.
/// `OUTBOX_RELAY_CONFIG` names the file and is not a key.
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__")
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
        assert_eq!(
            from_toml("").unwrap().inbox.table.to_string(),
            "outbox_inbox"
        );
        let err = from_toml("[database]\ntable = \"x; drop table y\"\n").unwrap_err();
        assert_eq!(err.key, "database.table");
    }

    #[test]
    fn values_parsed_while_loading_name_their_key() {
        let err = from_toml("[database]\nurl = \"postgres://u@h/db?sslmode=bogus\"\n").unwrap_err();
        assert_eq!(err.key, "database.url");
        assert!(err.to_string().contains("unknown sslmode `bogus`"), "{err}");
        let err = from_toml("[broker.rabbitmq]\nrouting_key = \"{aggregate}\"\n").unwrap_err();
        assert_eq!(err.key, "broker.rabbitmq.routing_key");
        assert!(err.to_string().contains("unknown placeholder"), "{err}");
    }

    #[test]
    fn parsed_values_show_as_written() {
        let config = from_toml(
            "[database]\nurl = \"postgres://app:hunter2@db/app?sslmode=require\"\n\
             table = \"app.events\"\n[broker.rabbitmq]\nrouting_key = \"x.{event_type}\"\n",
        )
        .unwrap();
        let shown = config.redacted_toml();
        assert!(
            shown.contains("url = \"postgres://app:***@db/app?sslmode=require\""),
            "{shown}"
        );
        assert!(shown.contains("table = \"app.events\""), "{shown}");
        assert!(
            shown.contains("routing_key = \"x.{event_type}\""),
            "{shown}"
        );
        // The Debug form (what a `{config:?}` in a log line prints) hides the password too.
        assert!(!format!("{config:?}").contains("hunter2"));
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
        config.database.url = "postgres://app:hunter2@db/app".parse().unwrap();
        assert!(!config.redacted_toml().contains("hunter2"));
    }
}
