//! `[database]`: where the outbox lives, and the parsed form of `database.url`
//! ([`PgTarget`]: libpq `sslmode` values tokio-postgres does not know, `sslrootcert`).

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;

use super::{TableName, redact::redact_url};

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// libpq-style URL; `sslmode=require|verify-ca|verify-full` turns on TLS (rustls).
    pub url: DatabaseUrl,
    /// Outbox table, optionally schema-qualified (`schema.table`).
    pub table: TableName,
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
    /// Deadline of every statement the daemon runs: the server cancels a statement that runs
    /// longer (`statement_timeout`) and ends a session idle inside a transaction that long
    /// (`idle_in_transaction_session_timeout`); the relay gives up on an answer 2 s after it
    /// (a connection that stopped answering without closing) and treats that connection as
    /// lost. Operator commands and `migrate` run without it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::parse("postgres://postgres@127.0.0.1:5432/postgres")
                .expect("the default URL parses"),
            table: TableName::parse("outbox_events").expect("the default table name is valid"),
            pool_size: 8,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            password_file: None,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// `database.url`, parsed once when the configuration loads: the text as configured (shown
/// redacted) and the connection settings it stands for.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseUrl {
    raw: String,
    target: PgTarget,
}

/// `database.url` (or `--database-url`) cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid database URL: {0}")]
pub struct InvalidUrl(String);

impl DatabaseUrl {
    /// Parses a libpq-style URL (`postgres://...`) or key/value string (`host=... user=...`).
    pub fn parse(raw: &str) -> Result<Self, InvalidUrl> {
        Ok(Self {
            raw: raw.to_owned(),
            target: PgTarget::parse(raw)?,
        })
    }

    /// The URL as configured (with its password: never log it, see [`redact_url`]).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The connection settings.
    pub fn target(&self) -> &PgTarget {
        &self.target
    }
}

impl FromStr for DatabaseUrl {
    type Err = InvalidUrl;

    fn from_str(raw: &str) -> Result<Self, InvalidUrl> {
        Self::parse(raw)
    }
}

impl TryFrom<String> for DatabaseUrl {
    type Error = InvalidUrl;

    fn try_from(raw: String) -> Result<Self, InvalidUrl> {
        Self::parse(&raw)
    }
}

impl From<DatabaseUrl> for String {
    fn from(url: DatabaseUrl) -> String {
        url.raw
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&redact_url(&self.raw))
            .finish()
    }
}

/// How the server certificate is checked (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, certificate not verified (libpq `prefer`, the default).
    Prefer,
    /// TLS required, certificate not verified (libpq `require` without `sslrootcert`).
    Require,
    /// TLS required, certificate chain verified, host name not.
    VerifyCa,
    /// TLS required, certificate chain and host name verified.
    VerifyFull,
}

/// The connection settings of a `database.url`.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// The tokio-postgres connection settings (sslmode mapped to what it understands).
    pub config: tokio_postgres::Config,
    /// Certificate verification mode.
    pub tls: TlsMode,
    /// `sslrootcert` from the URL.
    pub root_cert: Option<PathBuf>,
}

impl PgTarget {
    /// Parses a libpq-style URL or key/value string.
    fn parse(url: &str) -> Result<Self, InvalidUrl> {
        let mut tls = TlsMode::Prefer;
        let mut root_cert = None;
        let mut take = |key: &str, value: &str| -> Result<bool, InvalidUrl> {
            match key {
                "sslmode" => {
                    tls = match value {
                        "disable" => TlsMode::Disable,
                        "allow" | "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        other => {
                            return Err(InvalidUrl(format!("unknown sslmode `{other}`")));
                        }
                    };
                    Ok(true)
                }
                "sslrootcert" => {
                    root_cert = Some(PathBuf::from(value));
                    Ok(true)
                }
                _ => Ok(false),
            }
        };
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut parsed = url::Url::parse(url).map_err(|e| InvalidUrl(e.to_string()))?;
            let mut kept = Vec::new();
            for (k, v) in parsed.query_pairs() {
                if !take(&k, &v)? {
                    kept.push((k.into_owned(), v.into_owned()));
                }
            }
            if kept.is_empty() {
                parsed.set_query(None);
            } else {
                parsed.query_pairs_mut().clear().extend_pairs(kept);
            }
            parsed.to_string()
        } else {
            let mut kept = Vec::new();
            for token in url.split_whitespace() {
                let (k, v) = token.split_once('=').unwrap_or((token, ""));
                if !take(k, v)? {
                    kept.push(token);
                }
            }
            kept.join(" ")
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| InvalidUrl(e.to_string()))?;
        if root_cert.is_some() && tls == TlsMode::Require {
            // libpq: `require` with a root certificate behaves like `verify-ca`.
            tls = TlsMode::VerifyCa;
        }
        config.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        Ok(PgTarget {
            config,
            tls,
            root_cert,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_libpq_sslmodes() {
        let t =
            PgTarget::parse("postgres://u@h/db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(t.tls, TlsMode::VerifyFull);
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(t.config.get_application_name(), Some("x"));
        let t = PgTarget::parse("host=h user=u sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!(t.tls, TlsMode::VerifyCa);
        assert_eq!(t.root_cert, Some(PathBuf::from("/ca.pem")));
        let t = PgTarget::parse("postgres://u@h/db").unwrap();
        assert_eq!(t.tls, TlsMode::Prefer);
        assert!(PgTarget::parse("postgres://u@h/db?sslmode=bogus").is_err());
    }
}
