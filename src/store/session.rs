//! This relay's own server sessions: which one a connection is ([`SessionId`]), and ending
//! one the relay gave up on. A connection that stops answering without closing (a frozen
//! network path, a stuck pooler) stays alive on the server, with whatever it holds: the
//! coordination session's advisory locks (its buckets), the listener's slot. The relay ends
//! such a session from its replacement, as soon as the replacement is open.

use std::time::SystemTime;

use tokio_postgres::Client;

/// Which server session a connection is: its backend pid and start time (a pid alone may be
/// reused by a later session).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionId {
    /// `pg_backend_pid()`.
    pub pid: i32,
    /// `pg_stat_activity.backend_start`.
    pub started: SystemTime,
}

impl SessionId {
    /// The session behind `client`.
    pub async fn of(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(Self {
            pid: row.get(0),
            started: row.get(1),
        })
    }
}

/// Ends session `zombie` with `pg_terminate_backend` (a role may end its own sessions);
/// whether it was still there. The server releases what it held as it exits.
pub async fn end_session(
    client: &Client,
    zombie: SessionId,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid = $1 AND backend_start = $2",
            &[&zombie.pid, &zombie.started],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}
