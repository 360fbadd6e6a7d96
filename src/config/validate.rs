//! The rules a deserialized [`Config`] must also satisfy: ranges, and relations between keys.
//! Each failure names its key.

use std::time::Duration;

use super::{BrokerKind, Config, ConfigError};

impl Config {
    /// Checks the rules across keys and the ranges serde cannot express (values that need
    /// parsing, e.g. `database.url`, were parsed when the config was deserialized).
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive(self.database.pool_size, "database.pool_size")?;
        positive(self.relay.batch_size, "relay.batch_size")?;
        if self.relay.batch_size > 10_000 {
            return Err(ConfigError::new(
                "relay.batch_size",
                "must be at most 10000",
            ));
        }
        if let Some(batches) = self.relay.max_inflight_batches {
            positive(batches, "relay.max_inflight_batches")?;
        }
        positive(self.relay.max_in_flight, "relay.max_in_flight")?;
        positive(self.relay.publish_channels, "relay.publish_channels")?;
        if self.relay.publish_channels > 256 {
            return Err(ConfigError::new(
                "relay.publish_channels",
                "must be at most 256",
            ));
        }
        if self.relay.max_pending_in_memory < self.relay.batch_size {
            return Err(ConfigError::new(
                "relay.max_pending_in_memory",
                "must be at least relay.batch_size",
            ));
        }
        nonzero(self.relay.rescan_interval, "relay.rescan_interval")?;
        nonzero(self.relay.poll_interval, "relay.poll_interval")?;
        nonzero(
            self.relay.linger_poll_interval,
            "relay.linger_poll_interval",
        )?;
        nonzero(self.relay.publish_timeout, "relay.publish_timeout")?;
        nonzero(self.relay.shutdown_timeout, "relay.shutdown_timeout")?;
        if !(1..=65_535).contains(&self.relay.buckets) {
            return Err(ConfigError::new(
                "relay.buckets",
                "must be between 1 and 65535",
            ));
        }
        nonzero(self.relay.rebalance_interval, "relay.rebalance_interval")?;
        if self.relay.lease_timeout <= self.relay.rebalance_interval {
            return Err(ConfigError::new(
                "relay.lease_timeout",
                "must be longer than relay.rebalance_interval",
            ));
        }
        nonzero(self.retry.initial_backoff, "retry.initial_backoff")?;
        if self.retry.max_backoff < self.retry.initial_backoff {
            return Err(ConfigError::new(
                "retry.max_backoff",
                "must be at least retry.initial_backoff",
            ));
        }
        positive(self.retry.max_attempts as usize, "retry.max_attempts")?;
        nonzero(self.metrics.refresh_interval, "metrics.refresh_interval")?;
        nonzero(self.retention.interval, "retention.interval")?;
        positive(self.retention.batch_size, "retention.batch_size")?;
        match self.broker.kind {
            BrokerKind::Rabbitmq => {
                let r = &self.broker.rabbitmq;
                if !(r.url.starts_with("amqp://") || r.url.starts_with("amqps://")) {
                    return Err(ConfigError::new(
                        "broker.rabbitmq.url",
                        "must start with amqp:// or amqps://",
                    ));
                }
                if r.exchange.is_empty() || r.exchange.len() > 255 {
                    return Err(ConfigError::new(
                        "broker.rabbitmq.exchange",
                        "must be 1 to 255 characters",
                    ));
                }
            }
            BrokerKind::Sqs => {
                let s = &self.broker.sqs;
                if s.queue_url.is_empty() && s.routes.is_empty() {
                    return Err(ConfigError::new(
                        "broker.sqs.queue_url",
                        "is required when broker.kind = \"sqs\"",
                    ));
                }
                positive(s.max_message_bytes, "broker.sqs.max_message_bytes")?;
            }
        }
        Ok(())
    }
}

fn positive(value: usize, key: &str) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

fn nonzero(value: Duration, key: &str) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}
