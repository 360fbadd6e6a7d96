//! Connecting to Postgres: the [`Connector`] built from `[database]` (the URL was parsed by
//! [`crate::config::DatabaseUrl`]), the deadpool pool for claim/settle, and dedicated
//! connections (LISTEN, coordination, commands) that are never pooled. Every connection goes
//! through the connection gate ([`super::gate`]). The rustls set-up per `sslmode` is in
//! `tls`, the re-read password file in `password_file`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

mod password_file;
mod tls;

use password_file::PasswordFile;
use tls::client_config;

use super::gate::{self, Gate};
use crate::config::{DatabaseConfig, DatabaseUrl, InvalidUrl, PgTarget};

/// Problems turning `database.url` into a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be parsed.
    #[error(transparent)]
    InvalidUrl(#[from] InvalidUrl),
    /// A CA file cannot be read.
    #[error("cannot read CA certificates from {path}: {message}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// `database.password_file` cannot be read.
    #[error("config key `database.password_file`: cannot read {path}: {message}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Building TLS settings failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The pool could not be built.
    #[error("cannot create connection pool: {0}")]
    Pool(String),
    /// Connecting failed; `cause` says why in an operator's words (see [`gate::describe`]).
    #[error("cannot connect to Postgres: {cause}")]
    Postgres {
        /// What went wrong, with the server's address where it helps.
        cause: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting took longer than `database.connect_timeout`.
    #[error("cannot connect to Postgres: {0}")]
    Timeout(String),
}

/// Everything needed to open connections: the parsed target plus the TLS connector.
#[derive(Clone)]
pub struct Connector {
    target: PgTarget,
    tls: MakeRustlsConnect,
    connect_timeout: Duration,
    /// Every connection of this connector and its clones (pool included) goes through it.
    gate: Gate,
    /// `database.password_file`, re-read for every new connection.
    password_file: Option<Arc<PasswordFile>>,
    /// Server-side `statement_timeout` and `idle_in_transaction_session_timeout` of every
    /// session (the daemon's `database.statement_timeout`; none for commands).
    statement_timeout: Option<Duration>,
}

impl Connector {
    /// The connector `database` configures: its URL, CA file, connect timeout and password
    /// file. `application_name` identifies the relay in `pg_stat_activity`. The relay and
    /// every command open the database through this.
    pub fn from_config(
        database: &DatabaseConfig,
        application_name: &str,
    ) -> Result<Self, ConnectError> {
        Self::for_target(
            database.url.target().clone(),
            database.ca_file.as_deref(),
            application_name,
            database.connect_timeout,
        )?
        .with_password_file(database.password_file.as_deref())
    }

    /// Builds a connector for `url` (for tools and tests that have a URL, not a config),
    /// trusting the system roots plus `ca_file` and the URL's `sslrootcert`.
    pub fn new(
        url: &str,
        ca_file: Option<&std::path::Path>,
        application_name: &str,
        connect_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let url = DatabaseUrl::parse(url)?;
        Self::for_target(
            url.target().clone(),
            ca_file,
            application_name,
            connect_timeout,
        )
    }

    fn for_target(
        mut target: PgTarget,
        ca_file: Option<&std::path::Path>,
        application_name: &str,
        connect_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        if target.config.get_application_name().is_none() {
            target.config.application_name(application_name);
        }
        target.config.connect_timeout(connect_timeout);
        // Notice a server or network that vanished without closing the connection (failover
        // to another address, blackholed route) in ~30 s instead of the system defaults (2 h
        // keepalive idle, ~15 min of retransmissions): idle LISTEN connections and hung
        // queries then fail and are reconnected. URL parameters win.
        if target.config.get_tcp_user_timeout().is_none() {
            target.config.tcp_user_timeout(Duration::from_secs(30));
        }
        if target.config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            target
                .config
                .keepalives_idle(Duration::from_secs(10))
                .keepalives_interval(Duration::from_secs(5))
                .keepalives_retries(3);
        }
        let mut extra: Vec<PathBuf> = ca_file.map(|p| vec![p.to_owned()]).unwrap_or_default();
        extra.extend(target.root_cert.clone());
        let tls = MakeRustlsConnect::new(client_config(target.tls, &extra)?);
        Ok(Self {
            target,
            tls,
            connect_timeout,
            gate: Gate::new(),
            password_file: None,
            statement_timeout: None,
        })
    }

    /// Takes the password from `path` (`database.password_file`) instead of the URL, read
    /// now (an unreadable file is an error) and again for every new connection.
    pub fn with_password_file(
        mut self,
        path: Option<&std::path::Path>,
    ) -> Result<Self, ConnectError> {
        if let Some(path) = path {
            let password = PasswordFile::read(path).map_err(|e| ConnectError::PasswordFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            self.password_file = Some(Arc::new(PasswordFile {
                path: path.to_owned(),
                last: std::sync::Mutex::new(password),
            }));
        }
        Ok(self)
    }

    /// Sets `statement_timeout` and `idle_in_transaction_session_timeout` on every session
    /// this connector opens (after the URL's own `options`, so these win).
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// The connection settings for the next connection (with the password file's current
    /// content, if there is one).
    fn settings(&self) -> tokio_postgres::Config {
        let mut config = self.target.config.clone();
        if let Some(file) = &self.password_file {
            config.password(file.current());
        }
        if let Some(timeout) = self.statement_timeout {
            let ms = timeout.as_millis().max(1);
            let deadlines =
                format!("-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}");
            let options = match config.get_options() {
                Some(own) if !own.trim().is_empty() => format!("{own} {deadlines}"),
                _ => deadlines,
            };
            config.options(&options);
        }
        config
    }

    /// The connection gate shared by this connector's connections.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// `host:port` of the server, for messages.
    pub fn server(&self) -> String {
        gate::target(&self.target.config)
    }

    /// A deadpool pool of `size` connections (verified with a cheap check on recycle).
    pub fn pool(&self, size: usize) -> Result<Pool, ConnectError> {
        let manager = Manager::from_connect(
            self.target.config.clone(),
            GatedConnect(self.clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // No create timeout: creating waits at the gate while the database refuses
        // connections (that wait is the backoff), and each attempt is bounded by
        // `database.connect_timeout` inside `GatedConnect`.
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .create_timeout(None)
            .wait_timeout(Some(self.connect_timeout * 2))
            .recycle_timeout(Some(self.connect_timeout))
            .build()
            .map_err(|e| ConnectError::Pool(e.to_string()))
    }

    /// A dedicated connection; the returned receiver yields its asynchronous messages
    /// (notifications, notices) and ends when the connection closes. Dropping the receiver
    /// does not close the connection: the client does, when it is dropped.
    pub async fn connect_dedicated(
        &self,
    ) -> Result<
        (
            Client,
            tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
        ),
        ConnectError,
    > {
        let server = self.server();
        let (client, mut connection) = self
            .gate
            .attempt(self.connect_once(), |e: &ConnectError| match e {
                ConnectError::Postgres { cause, .. } | ConnectError::Timeout(cause) => {
                    cause.clone()
                }
                other => format!("{other} ({server})"),
            })
            .await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = futures::StreamExt::next(&mut stream).await {
                match message {
                    // Nobody listening (an operator command ignores notices): drop the message
                    // and keep driving the connection; ending here would close it.
                    Ok(message) => {
                        let _ = tx.send(message);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "dedicated Postgres connection closed");
                        break;
                    }
                }
            }
        });
        Ok((client, rx))
    }
}

/// The stream type of a (possibly) TLS connection made by [`MakeRustlsConnect`].
type TlsStream =
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

impl Connector {
    /// One attempt, bounded by `database.connect_timeout` (TLS and authentication included),
    /// not gated.
    async fn connect_once(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>,
        ),
        ConnectError,
    > {
        let settings = self.settings();
        let connect = settings.connect(self.tls.clone());
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(connected)) => Ok(connected),
            Ok(Err(source)) => Err(ConnectError::Postgres {
                cause: gate::describe(&source, &self.server(), self.connect_timeout),
                source,
            }),
            Err(_) => Err(ConnectError::Timeout(gate::timed_out(
                &self.server(),
                self.connect_timeout,
            ))),
        }
    }
}

/// The pool's way to connect: through the connector's gate, each attempt bounded by
/// `database.connect_timeout`.
struct GatedConnect(Connector);

impl deadpool_postgres::Connect for GatedConnect {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> futures::future::BoxFuture<
        '_,
        Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        Box::pin(async move {
            let connector = &self.0;
            let server = connector.server();
            let timeout = connector.connect_timeout;
            let attempt = async {
                let settings = connector.settings();
                let connect = settings.connect(connector.tls.clone());
                tokio::time::timeout(timeout, connect)
                    .await
                    // tokio-postgres' own error for a timed-out connect (its constructor is
                    // public but hidden); the gate records the description below.
                    .unwrap_or_else(|_| Err(tokio_postgres::Error::__private_api_timeout()))
            };
            let (client, connection) = connector
                .gate
                .attempt(attempt, |e| gate::describe(e, &server, timeout))
                .await?;
            let task = tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "pooled Postgres connection closed");
                }
            });
            Ok((client, task))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_file_is_read_for_every_connection_and_survives_a_gap() {
        let dir = std::env::temp_dir().join(format!("outbox-pw-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, "first\n").unwrap();
        let connector = Connector::new("postgres://u@h/db", None, "t", Duration::from_secs(1))
            .unwrap()
            .with_password_file(Some(&path))
            .unwrap();
        assert_eq!(connector.settings().get_password(), Some(&b"first"[..]));
        // rotated: the next connection uses the new one
        std::fs::write(&path, "second").unwrap();
        assert_eq!(connector.settings().get_password(), Some(&b"second"[..]));
        // mid-rotation (file gone): the last one read
        std::fs::remove_file(&path).unwrap();
        assert_eq!(connector.settings().get_password(), Some(&b"second"[..]));
    }

    #[test]
    fn an_unreadable_password_file_names_the_key() {
        let error = Connector::new("postgres://u@h/db", None, "t", Duration::from_secs(1))
            .unwrap()
            .with_password_file(Some(std::path::Path::new("/nonexistent/pw")))
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("database.password_file"),
            "{error}"
        );
    }
}
