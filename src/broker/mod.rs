//! Brokers: the [`Publisher`] contract and one module per backend.
//!
//! Contract for every backend: `Ok(())` for an event means the broker has durably accepted
//! the message (RabbitMQ: publisher-confirm ack and not returned; SQS: per-entry success).
//! Delivery is at-least-once; the event ID is the message ID / dedupe key. Events of one call
//! are sent in slice order; the relay never puts two events of the same aggregate in one
//! call, so backends need not care about ordering across the slice.

pub mod rabbitmq;
pub mod sqs;

use std::future::Future;

use crate::event::OutboxEvent;

/// Why one event was not accepted. The relay's error policy
/// ([`crate::relay::policy`]) maps each kind to retry, dead or pause.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PublishError {
    /// RabbitMQ returned the message (`basic.return`): no queue is bound for its routing key.
    #[error("unroutable: {0}")]
    Unroutable(String),
    /// The broker negatively acknowledged the message.
    #[error("nacked by the broker")]
    Nacked,
    /// No confirmation within `relay.publish_timeout`.
    #[error("no confirmation within the publish timeout")]
    Timeout,
    /// The broker refused this message for a reason the sender must fix (permanent).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The event cannot fit in a message (permanent).
    #[error("message too large: {size} bytes, limit {limit} bytes ({} over)", size - limit)]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The broker cannot be reached (connection or channel down).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A per-message failure the broker says is not the sender's fault (retry).
    #[error("transient failure: {0}")]
    Transient(String),
}

impl PublishError {
    /// Every value [`PublishError::reason`] returns: the `reason` series of
    /// `outbox_publish_failures_total` exported at 0 from start-up.
    pub const REASONS: [&'static str; 7] = [
        "unroutable",
        "nacked",
        "timeout",
        "rejected",
        "too_large",
        "broker_down",
        "transient",
    ];

    /// The `reason` label of `outbox_publish_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::Unroutable(_) => "unroutable",
            PublishError::Nacked => "nacked",
            PublishError::Timeout => "timeout",
            PublishError::Rejected(_) => "rejected",
            PublishError::TooLarge { .. } => "too_large",
            PublishError::Unavailable(_) => "broker_down",
            PublishError::Transient(_) => "transient",
        }
    }
}

/// The outcome for one event.
pub type Outcome = Result<(), PublishError>;

/// A broker backend. Few methods, native async; implementations are cheap to share (`&self`).
pub trait Publisher: Send + Sync + 'static {
    /// Connects, or checks the existing connection and reconnects if it is gone. `Err` means
    /// the broker is unreachable; the relay then pauses and calls this again with backoff.
    fn connect(&self) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Publishes `events` (pipelined) and returns one outcome per event, in the same order.
    fn publish(&self, events: &[OutboxEvent]) -> impl Future<Output = Vec<Outcome>> + Send;

    /// The destination label (exchange or queue) for metrics and logs.
    fn destination(&self, event: &OutboxEvent) -> String;

    /// Every destination label known from the configuration (exported at 0 from start-up).
    fn destinations(&self) -> Vec<String> {
        Vec::new()
    }

    /// The connection is known to be gone although no publish failed yet (e.g. the broker
    /// closed it while the relay was idle): the relay then reports the broker down and
    /// reconnects before its next publish. Connectionless backends keep the default.
    fn lost(&self) -> bool {
        false
    }

    /// Closes connections (at shutdown, after the last publish).
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The configured backend: an enum, so the relay stays generic without `dyn`. One per
/// process, so the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Broker {
    /// RabbitMQ.
    RabbitMq(rabbitmq::RabbitMqPublisher),
    /// AWS SQS.
    Sqs(sqs::SqsPublisher),
}

impl Publisher for Broker {
    async fn connect(&self) -> Result<(), PublishError> {
        match self {
            Broker::RabbitMq(p) => p.connect().await,
            Broker::Sqs(p) => p.connect().await,
        }
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        match self {
            Broker::RabbitMq(p) => p.publish(events).await,
            Broker::Sqs(p) => p.publish(events).await,
        }
    }

    fn destination(&self, event: &OutboxEvent) -> String {
        match self {
            Broker::RabbitMq(p) => p.destination(event),
            Broker::Sqs(p) => p.destination(event),
        }
    }

    fn destinations(&self) -> Vec<String> {
        match self {
            Broker::RabbitMq(p) => p.destinations(),
            Broker::Sqs(p) => p.destinations(),
        }
    }

    fn lost(&self) -> bool {
        match self {
            Broker::RabbitMq(p) => p.lost(),
            Broker::Sqs(p) => p.lost(),
        }
    }

    async fn close(&self) {
        match self {
            Broker::RabbitMq(p) => p.close().await,
            Broker::Sqs(p) => p.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed() {
        let errors = [
            PublishError::Unroutable(String::new()),
            PublishError::Nacked,
            PublishError::Timeout,
            PublishError::Rejected(String::new()),
            PublishError::TooLarge { size: 2, limit: 1 },
            PublishError::Unavailable(String::new()),
            PublishError::Transient(String::new()),
        ];
        let reasons: Vec<&str> = errors.iter().map(PublishError::reason).collect();
        assert_eq!(reasons, PublishError::REASONS);
    }
}
