//! `[relay]` and `[retry]`: the pipeline's wake-up, batching, replicas and shutdown, and the
//! retry / dead-letter policy.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

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
    /// A replica whose broker has been unusable this long (while its database is fine) lets
    /// its buckets go, and stops counting as a replica, so the others publish its share; it
    /// takes buckets again once it can publish. `0s`: never.
    #[serde(with = "humantime_serde")]
    pub broker_release_after: Duration,
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
            broker_release_after: Duration::from_secs(30),
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

impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayMode::Notify => "notify",
            RelayMode::Poll => "poll",
        })
    }
}
