//! The SQL of replica coordination: a dedicated session whose session-level advisory locks
//! are keyed by the outbox table's OID (so two outbox tables never share keys), and the
//! census of those locks in `pg_locks`. What the keys mean (members, bucket counts, buckets)
//! is the coordinator's protocol ([`crate::relay::coordinator`]); this module only locks,
//! unlocks and counts.

use tokio_postgres::Client;

use super::session::{SessionId, end_session};
use crate::config::TableName;

/// A coordination session: one dedicated connection and the table's OID.
pub struct LockSession {
    client: Client,
    oid: i64,
    id: SessionId,
}

impl LockSession {
    /// Prepares `client` for coordination: TCP keepalives so the server notices a vanished
    /// relay within ~25 s (its locks, and so its buckets, are then released), an
    /// `application_name`, and the table's OID for the keys.
    pub async fn open(client: Client, table: &TableName) -> Result<Self, tokio_postgres::Error> {
        client
            .batch_execute(
                "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                 SET tcp_keepalives_count = 3; SET application_name = 'outbox-relay-coordinator'",
            )
            .await?;
        // Also when the server has unacknowledged data for a vanished client (PostgreSQL 12+;
        // older servers keep the default).
        let _ = client.batch_execute("SET tcp_user_timeout = 25000").await;
        let oid: i64 = client
            .query_one("SELECT $1::text::regclass::oid::int8", &[&table.regclass()])
            .await?
            .get(0);
        let id = SessionId::of(&client).await?;
        Ok(Self { client, oid, id })
    }

    /// This session's identity on the server.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Ends an earlier coordination session of this relay that stopped answering (a frozen
    /// network path keeps it alive on the server, and with it its advisory locks: its
    /// buckets, and a member slot that counts a relay that is gone). See [`end_session`].
    pub async fn end(&self, zombie: SessionId) -> Result<bool, tokio_postgres::Error> {
        end_session(&self.client, zombie).await
    }

    /// The advisory lock key of `class` for this table.
    fn key(&self, class: i64) -> i64 {
        (class << 32) | self.oid
    }

    /// Takes the exclusive lock of `class` if free; whether it was taken.
    pub async fn try_lock(&self, class: i64) -> Result<bool, tokio_postgres::Error> {
        Ok(self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key(class)])
            .await?
            .get(0))
    }

    /// Takes a shared lock of `class` (waits while someone holds it exclusively).
    pub async fn lock_shared(&self, class: i64) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute("SELECT pg_advisory_lock_shared($1)", &[&self.key(class)])
            .await?;
        Ok(())
    }

    /// Releases one exclusive lock of `class`.
    pub async fn unlock(&self, class: i64) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key(class)])
            .await?;
        Ok(())
    }

    /// Counts granted locks of this table in this database: how many holders of classes in
    /// `[members, members + 65535]`, and how many distinct classes in `[counts, counts +
    /// 65535]` are held.
    pub async fn census(
        &self,
        members: i64,
        counts: i64,
    ) -> Result<(i64, i64), tokio_postgres::Error> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE classid::int8 BETWEEN $2 AND $2 + 65535), \
                        count(DISTINCT classid) FILTER (WHERE classid::int8 BETWEEN $3 AND $3 + 65535) \
                 FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                   AND objid::int8 = $1 \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&self.oid, &members, &counts],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }
}
