//! `[broker]`: which broker to publish to, `[broker.rabbitmq]` and `[broker.sqs]`.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::RoutingTemplate;

/// Which broker backend is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// RabbitMQ over AMQP 0-9-1 (lapin).
    Rabbitmq,
    /// AWS SQS (aws-sdk-sqs).
    Sqs,
}

/// `[broker]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `rabbitmq` or `sqs`.
    pub kind: BrokerKind,
    /// `[broker.rabbitmq]`
    pub rabbitmq: RabbitMqConfig,
    /// `[broker.sqs]`
    pub sqs: SqsConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Rabbitmq,
            rabbitmq: RabbitMqConfig::default(),
            sqs: SqsConfig::default(),
        }
    }
}

/// `[broker.rabbitmq]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqConfig {
    /// `amqp://` or `amqps://` URL (credentials are redacted in logs).
    pub url: String,
    /// Durable topic exchange the relay publishes to (declared if missing).
    pub exchange: String,
    /// Routing key template: `{aggregate_type}`, `{aggregate_id}`, `{event_type}`.
    pub routing_key: RoutingTemplate,
    /// PEM file with CA certificates trusted for `amqps://`.
    pub ca_file: Option<PathBuf>,
    /// AMQP heartbeat the relay asks for (the server may lower it): a connection that stops
    /// answering without closing is noticed within two of these. A `heartbeat=` in `url`
    /// wins; `0s` turns heartbeats off.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "outbox".into(),
            routing_key: RoutingTemplate::parse("{aggregate_type}.{event_type}")
                .expect("the default template parses"),
            ca_file: None,
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// `[broker.sqs]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsConfig {
    /// Default destination queue (a `.fifo` URL selects FIFO semantics).
    pub queue_url: String,
    /// AWS region; empty means the standard AWS chain decides.
    pub region: Option<String>,
    /// Custom endpoint (emulators, VPC endpoints).
    pub endpoint_url: Option<String>,
    /// Per aggregate type destination queues, overriding `queue_url`.
    pub routes: BTreeMap<String, String>,
    /// Largest message (body + attributes) the relay sends; larger events go dead at once.
    pub max_message_bytes: usize,
}

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            queue_url: String::new(),
            region: None,
            endpoint_url: None,
            routes: BTreeMap::new(),
            max_message_bytes: 1024 * 1024,
        }
    }
}
