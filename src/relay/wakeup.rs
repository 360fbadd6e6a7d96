//! Wake-ups: a dedicated (never pooled) connection that LISTENs on the table's channel and
//! turns notifications into [`Wakeup::notified`]. When the connection drops it reconnects
//! with backoff, re-LISTENs, and fires one wake-up so anything written meanwhile is found.
//!
//! A connection that stops answering without closing (a frozen network path) delivers no
//! notifications and no error: every [`LIVENESS_EVERY`] the listener sends an empty query and
//! replaces the connection when no answer comes within [`LIVENESS_TIMEOUT`], so a frozen
//! listener is noticed within 15 s (the fallback poll keeps finding events meanwhile).

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::backoff::ReconnectBackoff;
use crate::{
    config::TableName,
    store::{
        connect::Connector,
        session::{SessionId, end_session},
    },
};

/// How often the LISTEN connection is checked.
pub const LIVENESS_EVERY: Duration = Duration::from_secs(10);
/// How long the check waits for the server's answer.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

/// A wake-up signal shared by the listener and the pipeline.
#[derive(Clone, Default)]
pub struct Wakeup {
    notify: Arc<Notify>,
}

impl Wakeup {
    /// A fresh signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the pipeline (stores a permit if it is not waiting).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Waits for the next wake-up.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// Runs the LISTEN loop until `shutdown`. `on_listening` is called every time LISTEN is
/// (re-)established.
pub async fn listen(
    connector: Connector,
    table: TableName,
    wakeup: Wakeup,
    shutdown: CancellationToken,
) {
    let mut backoff = ReconnectBackoff::new();
    let mut first = true;
    // The first failure after a success is a warning; repeats are debug (the connection gate
    // spaces them, the health state reports the outage once).
    let mut failing = false;
    // The last connection, when it stopped answering: ended by the next one.
    let mut zombie: Option<SessionId> = None;
    while !shutdown.is_cancelled() {
        let connected = tokio::select! {
            connected = connector.connect_dedicated() => connected,
            _ = shutdown.cancelled() => return,
        };
        match connected {
            Ok((client, mut messages)) => {
                let setup = async {
                    if let Some(old) = zombie.take() {
                        // Best effort: a session that cannot be ended holds no locks.
                        let _ = end_session(&client, old).await;
                    }
                    let id = SessionId::of(&client).await.ok();
                    crate::store::listen(&client, &table).await.map(|()| id)
                };
                let listening = match tokio::time::timeout(LIVENESS_TIMEOUT, setup).await {
                    Ok(Ok(id)) => Ok(id),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err("no answer from Postgres within 5s".to_owned()),
                };
                if let Err(error) = &listening {
                    tracing::warn!(%error, "LISTEN failed; retrying");
                } else {
                    let id = listening.ok().flatten();
                    if !first {
                        tracing::info!(channel = table.name(), "LISTEN re-established");
                    }
                    tracing::debug!(channel = table.name(), "listening for new events");
                    first = false;
                    failing = false;
                    backoff.reset();
                    // Anything committed while we were not listening must be picked up.
                    wakeup.wake();
                    let mut check = tokio::time::interval(LIVENESS_EVERY);
                    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    check.reset();
                    let reason = loop {
                        tokio::select! {
                            message = messages.recv() => match message {
                                Some(AsyncMessage::Notification(_)) => wakeup.wake(),
                                Some(_) => {}
                                None => break "lost",
                            },
                            _ = check.tick() => {
                                let alive = tokio::time::timeout(
                                    LIVENESS_TIMEOUT,
                                    client.simple_query(""),
                                );
                                if !matches!(alive.await, Ok(Ok(_))) {
                                    zombie = id;
                                    break "not answering";
                                }
                            }
                            _ = shutdown.cancelled() => return,
                        }
                    };
                    tracing::warn!(reason, "LISTEN connection {reason}; reconnecting");
                }
            }
            Err(error) if failing => {
                tracing::debug!(%error, "cannot open LISTEN connection; retrying");
            }
            Err(error) => {
                failing = true;
                // The cause is reported once by the health state; this is for debugging.
                tracing::debug!(%error, "cannot open LISTEN connection; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
