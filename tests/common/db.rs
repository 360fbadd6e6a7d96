//! The tests' PostgreSQL (`OUTBOX_TEST_PG`, default `postgres://postgres@127.0.0.1:5432`): a
//! fresh database per test (uuid name, migrated or empty, dropped afterwards), clients, one
//! event written, the table's state as tests check it (rows per status, attempts and dead
//! rows, whether a relay sleeps), and terminating a relay's sessions.

use std::time::Duration;

use outbox_relay::{
    config::TableName,
    store::{connect::Connector, migrate::migrate},
};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use super::init_tracing;

/// Postgres server URL without a database.
pub fn pg_server() -> String {
    std::env::var("OUTBOX_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database created for one test and dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub table: TableName,
}

impl TestDb {
    /// Creates an empty database (no schema).
    pub async fn empty() -> Self {
        init_tracing();
        let name = format!("outbox_test_{}", Uuid::new_v4().simple());
        let admin = connect(&format!("{}/postgres", pg_server())).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self {
            url: format!("{}/{name}", pg_server()),
            name,
            table: TableName::parse("outbox_events").unwrap(),
        }
    }

    /// Creates a database and applies the schema for `outbox_events`.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        let mut client = db.client().await;
        migrate(&mut client, &db.table).await.unwrap();
        db
    }

    /// A plain client on this database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Inserts one event in its own transaction; returns its id.
    pub async fn insert(&self, client: &Client, aggregate_id: &str, event_type: &str) -> Uuid {
        insert_event(
            client,
            "order",
            aggregate_id,
            event_type,
            serde_json::json!({"n": event_type}),
        )
        .await
    }

    /// Every event's `seq`, by event ID (text).
    pub async fn seqs(&self, client: &Client) -> std::collections::HashMap<String, i64> {
        client
            .query("SELECT id::text, seq FROM outbox_events", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// `SELECT count(*) ... WHERE status = $1`.
    pub async fn count(&self, client: &Client, status: &str) -> i64 {
        count_status(client, status).await
    }
}

/// Rows of `outbox_events` with this status.
pub async fn count_status(client: &Client, status: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM outbox_events WHERE status = $1",
            &[&status],
        )
        .await
        .unwrap()
        .get(0)
}

/// A relay has announced that it sleeps (and waits for a NOTIFY): sleepers > wakers.
pub async fn relay_sleeps(client: &Client) -> bool {
    client
        .query_one(
            "SELECT pg_sequence_last_value('outbox_events_sleepers') \
                  > pg_sequence_last_value('outbox_events_wakers')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The most attempts any event has, and how many are dead.
pub async fn attempts_and_dead(client: &Client) -> (i32, i64) {
    let row = client
        .query_one(
            "SELECT COALESCE(max(attempts), 0), \
                    count(*) FILTER (WHERE status = 'dead') FROM outbox_events",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_execute_blocking(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs `sql` on the server's `postgres` database, best effort, from synchronous code (a
/// `Drop`, which cannot be async): on a separate thread and runtime.
pub fn admin_execute_blocking(sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&format!("{}/postgres", pg_server()), NoTls).await
            {
                tokio::spawn(conn);
                let _ = client.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

/// Connects without TLS and drives the connection in the background.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Inserts an event (autocommit) into `outbox_events`.
pub async fn insert_event(
    client: &Client,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: serde_json::Value,
) -> Uuid {
    client
        .query_one(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&aggregate_type, &aggregate_id, &event_type, &payload],
        )
        .await
        .unwrap()
        .get(0)
}

/// A connector for the given URL (for tests that need the library's TLS-aware connect).
pub fn connector(url: &str) -> Connector {
    Connector::new(url, None, "outbox-relay-test", Duration::from_secs(5)).unwrap()
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
