//! Wake-ups: a dedicated (never pooled) connection that LISTENs on the table's channel and
//! turns notifications into [`Wakeup::notified`]. When the connection drops it reconnects
//! with backoff, re-LISTENs, and fires one wake-up so anything written meanwhile is found.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::backoff::ReconnectBackoff;
use crate::{config::TableName, store::connect::Connector};

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
    while !shutdown.is_cancelled() {
        let connected = tokio::select! {
            connected = connector.connect_dedicated() => connected,
            _ = shutdown.cancelled() => return,
        };
        match connected {
            Ok((client, mut messages)) => {
                if let Err(error) = crate::store::listen(&client, &table).await {
                    tracing::warn!(%error, "LISTEN failed; retrying");
                } else {
                    if !first {
                        tracing::info!(channel = table.name(), "LISTEN re-established");
                    }
                    tracing::debug!(channel = table.name(), "listening for new events");
                    first = false;
                    failing = false;
                    backoff.reset();
                    // Anything committed while we were not listening must be picked up.
                    wakeup.wake();
                    loop {
                        tokio::select! {
                            message = messages.recv() => match message {
                                Some(AsyncMessage::Notification(_)) => wakeup.wake(),
                                Some(_) => {}
                                None => break,
                            },
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    tracing::warn!("LISTEN connection lost; reconnecting");
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
