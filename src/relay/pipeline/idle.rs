//! The idle protocol (notify mode): lingering after work, announcing sleep, verifying that
//! producers notify, sleeping, and waking up again when work turns up; the waits while idle
//! or in a database backoff.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::{broker::Publisher, config::RelayMode};

/// Where the loop is in the idle protocol (notify mode only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idle {
    /// Working, or lingering after work (polling fast, producers do not notify).
    Awake,
    /// Announced sleep; producers that may have missed it are not yet known to be done.
    Announced,
    /// Announced and verified: every later commit either notifies or was seen by a read.
    Asleep,
}

impl<P: Publisher> Pipeline<P> {
    /// Waits until the database backoff has passed (or shutdown).
    async fn wait_out_backoff(&self, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.read_blocked_until.into()) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Nothing held and nothing running: linger, announce sleep, or sleep.
    pub(super) async fn idle_wait(&mut self, shutdown: &CancellationToken) {
        if Instant::now() < self.read_blocked_until {
            return self.wait_out_backoff(shutdown).await;
        }
        let wait = match (self.config.mode, self.idle) {
            (RelayMode::Poll, _) => self.config.poll_interval,
            (RelayMode::Notify, Idle::Awake) => {
                if self.last_work.elapsed() < self.config.linger {
                    self.config.linger_poll_interval
                } else {
                    match self.ctx.store.announce_sleep().await {
                        Ok(_) => self.idle = Idle::Announced,
                        // Back off like a failed read: returning at once would retry the
                        // database in a tight loop.
                        Err(error) => {
                            self.database_trouble(&error);
                            return self.wait_out_backoff(shutdown).await;
                        }
                    }
                    // Re-check for work committed before the announcement.
                    return;
                }
            }
            (RelayMode::Notify, Idle::Announced) => match self.ctx.store.producers_quiet().await {
                Ok(true) => {
                    self.idle = Idle::Asleep;
                    // One more read: everything committed so far is visible now.
                    return;
                }
                // A producer that may have missed the announcement has not committed yet.
                Ok(false) => self.config.linger_poll_interval,
                Err(error) => {
                    self.database_trouble(&error);
                    return self.wait_out_backoff(shutdown).await;
                }
            },
            (RelayMode::Notify, Idle::Asleep) => self.config.poll_interval,
        };
        // Rows behind the cursor are looked for at least every rescan interval, asleep too.
        let wait = if self.cursor > 0 {
            let due = self.last_rescan + self.config.rescan_interval;
            wait.min(due.saturating_duration_since(Instant::now()))
        } else {
            wait
        };
        // A parked event that comes due ends the wait.
        let wait = match self.schedule.next_due() {
            Some(due) => wait.min(due.saturating_duration_since(Instant::now())),
            None => wait,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.wakeup.notified() => self.woken = true,
            // New buckets (or a lost lease) change what there is to read.
            _ = self.buckets.changed() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Marks the relay awake after it found work (producers stop notifying).
    pub(super) async fn wake_up(&mut self) {
        match self.ctx.store.announce_wake().await {
            Ok(()) => self.idle = Idle::Awake,
            Err(error) => tracing::debug!(%error, "announce wake failed"),
        }
    }
}
