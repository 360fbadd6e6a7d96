//! The tests' RabbitMQ (`OUTBOX_TEST_AMQP`, default `amqp://guest:guest@127.0.0.1:5672/%2f`):
//! a fresh exchange and queue per test, consuming what the relay published (with the
//! message's properties and headers), the queue's depth, and the server's own admin
//! (`rabbitmqctl`) to close a client's connections.

use std::time::Instant;

use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::PATIENCE;

/// RabbitMQ URL.
pub fn amqp_url() -> String {
    std::env::var("OUTBOX_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A per-test exchange with one queue bound to `binding` ("#" for everything).
pub struct TestBroker {
    pub exchange: String,
    pub queue: String,
    pub connection: Connection,
    pub channel: Channel,
}

impl TestBroker {
    /// Declares the exchange (durable topic, as the relay does) and no queue yet.
    pub async fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self::attach(
            &amqp_url(),
            &format!("outbox-test-{id}"),
            &format!("outbox-test-q-{id}"),
            false,
        )
        .await
    }

    /// Connects to the broker at `url` and declares `exchange` and `queue` (a `durable` queue
    /// survives a broker restart); attaching again after a restart finds them.
    pub async fn attach(url: &str, exchange: &str, queue: &str, durable: bool) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let (exchange, queue) = (exchange.to_owned(), queue.to_owned());
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    auto_delete: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: false,
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            exchange,
            queue,
            connection,
            channel,
        }
    }

    /// A broker whose queue is bound with `#` (receives everything).
    pub async fn bound() -> Self {
        let broker = Self::new().await;
        broker.bind("#").await;
        broker
    }

    /// Binds the test queue with `routing_key`.
    pub async fn bind(&self, routing_key: &str) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Starts consuming; messages arrive on the returned channel (acked on receipt).
    pub async fn consume(&self) -> mpsc::UnboundedReceiver<Received> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("c-{}", Uuid::new_v4()).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _keep = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                let props = &delivery.properties;
                let headers = props
                    .headers()
                    .as_ref()
                    .map(|h| {
                        h.inner()
                            .iter()
                            .map(|(k, v)| {
                                let v = match v {
                                    lapin::types::AMQPValue::LongString(s) => s.to_string(),
                                    other => format!("{other:?}"),
                                };
                                (k.to_string(), v)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let seq = props.headers().as_ref().and_then(|h| {
                    match h.inner().get(&lapin::types::ShortString::from("x-seq")) {
                        Some(lapin::types::AMQPValue::LongLongInt(n)) => Some(*n),
                        _ => None,
                    }
                });
                let msg = Received {
                    seq,
                    message_id: props
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    routing_key: delivery.routing_key.to_string(),
                    body: String::from_utf8_lossy(&delivery.data).into_owned(),
                    content_type: props.content_type().as_ref().map(|s| s.to_string()),
                    kind: props.kind().as_ref().map(|s| s.to_string()),
                    delivery_mode: *props.delivery_mode(),
                    timestamp: *props.timestamp(),
                    headers,
                    received_at: Instant::now(),
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// The test queue's ready messages and consumers (a passive declare). Unacked messages
    /// are not counted until their consumer's channel closed.
    pub async fn queue_state(&self) -> (u32, u32) {
        let queue = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (queue.message_count(), queue.consumer_count())
    }

    /// Deletes the queue and exchange.
    pub async fn cleanup(&self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), Default::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }
}

/// A consumed message.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    /// The `x-seq` header, when it is a long-long integer (the contract's type).
    pub seq: Option<i64>,
    pub routing_key: String,
    pub body: String,
    pub content_type: Option<String>,
    pub kind: Option<String>,
    pub delivery_mode: Option<u8>,
    pub timestamp: Option<u64>,
    pub headers: Vec<(String, String)>,
    pub received_at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Receives exactly `n` messages (fails after [`PATIENCE`]).
pub async fn receive_n(rx: &mut mpsc::UnboundedReceiver<Received>, n: usize) -> Vec<Received> {
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + PATIENCE;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => panic!("consumer closed after {} of {n} messages", out.len()),
            Err(_) => panic!("timed out after {} of {n} messages", out.len()),
        }
    }
    out
}

/// Has RabbitMQ itself close the connections whose client port is in `ports`
/// (`rabbitmqctl close_connection`: the server sends `connection.close` 320
/// CONNECTION_FORCED, as a node that shuts down does). Returns how many were closed.
pub async fn rabbitmq_close_connections(ports: &[u16]) -> usize {
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "peer_port",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .await
        .expect("rabbitmqctl (installed with rabbitmq-server by scripts/services.sh)");
    assert!(listed.status.success(), "{listed:?}");
    let mut closed = 0;
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (Some(pid), Some(port)) = (fields.next(), fields.next()) else {
            continue;
        };
        if port.parse::<u16>().is_ok_and(|p| ports.contains(&p)) {
            let status = tokio::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "closed by the test", "-q"])
                .status()
                .await
                .unwrap();
            assert!(status.success());
            closed += 1;
        }
    }
    closed
}
