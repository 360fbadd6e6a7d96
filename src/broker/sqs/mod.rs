//! AWS SQS backend (aws-sdk-sqs). Events are sent with SendMessageBatch (up to 10 entries and
//! 1 MiB per call, up to 16 calls in flight), per destination queue (`broker.sqs.routes` by
//! aggregate type, else `broker.sqs.queue_url`). Each entry's result is handled on its own:
//! success is a delivery, a failure SQS blames on the sender is permanent (dead now), any
//! other entry failure is retried. A whole call that fails because SQS cannot be reached,
//! throttles, errs on its side or refuses the caller pauses publishing; a whole call refused
//! for its content is split into single-entry calls so only the offending event is blamed.
//!
//! Submodules: [`message`] builds entries (the message contract and size accounting),
//! [`outcome`] classifies SQS's answers, [`hold_off`] spaces out reconnects after failed
//! calls.
//!
//! Credentials come from the standard AWS chain (environment, profile, web identity / IRSA),
//! never from the relay's configuration.

pub mod hold_off;
pub mod message;
pub mod outcome;

use std::{
    collections::{BTreeMap, HashMap},
    sync::RwLock,
    time::Duration,
};

use aws_sdk_sqs::{Client, types::QueueAttributeName};
use futures::{StreamExt, future::BoxFuture};

use self::{
    hold_off::HoldOff,
    outcome::{CallFailure, classify, describe, entry_outcomes},
};
use super::{Outcome, PublishError, Publisher};
use crate::{config::SqsConfig, event::OutboxEvent};

pub use message::{MAX_ATTRIBUTES, attributes, valid_attribute_name};

/// SendMessageBatch limits: entries per call, and the sum of the entries' sizes.
const MAX_BATCH_ENTRIES: usize = 10;
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// SendMessageBatch calls in flight per `publish`.
const CONCURRENCY: usize = 16;

/// Entries of one SendMessageBatch call, with their index in the published slice.
type Chunk = Vec<(usize, message::Entry)>;

/// The publisher could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Neither `broker.sqs.region` nor the AWS chain (`AWS_REGION`, profile) gives a region.
    #[error("no AWS region: set broker.sqs.region or AWS_REGION")]
    NoRegion,
}

/// Publishes to SQS queues.
pub struct SqsPublisher {
    client: Client,
    queue_url: String,
    routes: BTreeMap<String, String>,
    max_message_bytes: usize,
    publish_timeout: Duration,
    /// Each queue's `MaximumMessageSize` attribute as read by the last `connect`: a queue may
    /// be set to accept less than `broker.sqs.max_message_bytes` (anything from 1 KiB), and
    /// an event over it must go dead as too large instead of being sent to be refused.
    queue_limits: RwLock<HashMap<String, usize>>,
    /// Spaces out `connect` after whole calls failed.
    hold_off: HoldOff,
}

impl SqsPublisher {
    /// Loads AWS settings from the standard chain, overridden by `broker.sqs.region`;
    /// `broker.sqs.endpoint_url` applies to SQS only (not to STS, which web identity uses).
    pub async fn new(config: &SqsConfig, publish_timeout: Duration) -> Result<Self, SetupError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(SetupError::NoRegion);
        }
        let mut sqs = aws_sdk_sqs::config::Builder::from(&sdk);
        if let Some(endpoint) = &config.endpoint_url {
            sqs = sqs.endpoint_url(endpoint);
        }
        Ok(Self::with_client(
            Client::from_conf(sqs.build()),
            config,
            publish_timeout,
        ))
    }

    /// Uses an existing client (tests, or applications embedding the relay).
    pub fn with_client(client: Client, config: &SqsConfig, publish_timeout: Duration) -> Self {
        Self {
            client,
            queue_url: config.queue_url.clone(),
            routes: config.routes.clone(),
            max_message_bytes: config.max_message_bytes,
            publish_timeout,
            queue_limits: RwLock::new(HashMap::new()),
            hold_off: HoldOff::default(),
        }
    }

    /// The destination queue URL, or `None` when the type has no route and there is no
    /// default queue.
    fn queue_for(&self, event: &OutboxEvent) -> Option<&str> {
        self.routes
            .get(&event.aggregate_type)
            .map(String::as_str)
            .or(Some(self.queue_url.as_str()).filter(|q| !q.is_empty()))
    }

    /// The largest message `queue` takes: the configured limit, lowered to the queue's
    /// `MaximumMessageSize` once `connect` has read it.
    fn limit_for(&self, queue: &str) -> usize {
        let learned = self
            .queue_limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .copied();
        learned.map_or(self.max_message_bytes, |l| l.min(self.max_message_bytes))
    }

    /// Every queue the relay may send to.
    fn queues(&self) -> Vec<&str> {
        let mut queues: Vec<&str> = self.routes.values().map(String::as_str).collect();
        if !self.queue_url.is_empty() {
            queues.push(&self.queue_url);
        }
        queues.sort_unstable();
        queues.dedup();
        queues
    }

    /// Checks that `queue` answers GetQueueAttributes and records its `MaximumMessageSize`.
    async fn probe(&self, queue: &str) -> Result<(), PublishError> {
        let call = self
            .client
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .send();
        let output = match tokio::time::timeout(self.publish_timeout, call).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                return Err(PublishError::Unavailable(format!(
                    "queue {queue}: {}",
                    describe(&error)
                )));
            }
            Err(_) => {
                return Err(PublishError::Unavailable(format!(
                    "queue {queue}: no answer within the publish timeout"
                )));
            }
        };
        let limit = output
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
            .and_then(|v| v.parse::<usize>().ok());
        let mut limits = self.queue_limits.write().unwrap_or_else(|e| e.into_inner());
        match limit {
            Some(limit) => limits.insert(queue.to_owned(), limit),
            None => limits.remove(queue),
        };
        Ok(())
    }

    /// Sends one batch; returns an outcome per entry index.
    fn send<'a>(&'a self, queue: &'a str, chunk: Chunk) -> BoxFuture<'a, Vec<(usize, Outcome)>> {
        Box::pin(async move {
            let indices: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
            let entries: Vec<_> = chunk.iter().map(|(_, e)| e.entry.clone()).collect();
            let call = self
                .client
                .send_message_batch()
                .queue_url(queue)
                .set_entries(Some(entries))
                .send();
            let all =
                |error: PublishError| indices.iter().map(|i| (*i, Err(error.clone()))).collect();
            match tokio::time::timeout(self.publish_timeout, call).await {
                Err(_) => all(PublishError::Timeout),
                Ok(Ok(output)) => entry_outcomes(&indices, &output),
                Ok(Err(error)) => match classify(&error) {
                    // Isolate the offending entry: send each one alone.
                    CallFailure::Content(_) if chunk.len() > 1 => {
                        let singles = chunk.into_iter().map(|c| self.send(queue, vec![c]));
                        futures::future::join_all(singles)
                            .await
                            .into_iter()
                            .flatten()
                            .collect()
                    }
                    CallFailure::Content(detail) => all(PublishError::Rejected(detail)),
                    CallFailure::Unavailable(detail) => all(PublishError::Unavailable(detail)),
                },
            }
        })
    }
}

impl Publisher for SqsPublisher {
    async fn connect(&self) -> Result<(), PublishError> {
        if let Some((left, reason)) = self.hold_off.remaining() {
            return Err(PublishError::Unavailable(format!(
                "{reason} (holding off {} ms before probing again)",
                left.as_millis()
            )));
        }
        for queue in self.queues() {
            self.probe(queue).await?;
        }
        Ok(())
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        // Per queue, chunks of at most 10 entries and 1 MiB.
        let mut chunks: Vec<(&str, Chunk)> = Vec::new();
        let mut open: BTreeMap<&str, (Chunk, usize)> = BTreeMap::new();
        for (i, event) in events.iter().enumerate() {
            let Some(queue) = self.queue_for(event) else {
                outcomes[i] = Some(Err(PublishError::Rejected(format!(
                    "no queue for aggregate_type `{}`: add it to broker.sqs.routes or set \
                     broker.sqs.queue_url",
                    event.aggregate_type
                ))));
                continue;
            };
            let fifo = queue.ends_with(".fifo");
            match message::build(event, i, fifo, self.limit_for(queue)) {
                Err(error) => outcomes[i] = Some(Err(error)),
                Ok(entry) => {
                    let (current, bytes) = open.entry(queue).or_default();
                    if current.len() == MAX_BATCH_ENTRIES || *bytes + entry.size > MAX_BATCH_BYTES {
                        chunks.push((queue, std::mem::take(current)));
                        *bytes = 0;
                    }
                    *bytes += entry.size;
                    current.push((i, entry));
                }
            }
        }
        chunks.extend(
            open.into_iter()
                .filter(|(_, (c, _))| !c.is_empty())
                .map(|(q, (c, _))| (q, c)),
        );
        let sent = !chunks.is_empty();
        let calls: Vec<_> = chunks
            .into_iter()
            .map(|(queue, chunk)| self.send(queue, chunk))
            .collect();
        let results: Vec<Vec<(usize, Outcome)>> = futures::stream::iter(calls)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut down = None;
        for (i, outcome) in results.into_iter().flatten() {
            match &outcome {
                Err(PublishError::Unavailable(detail)) => {
                    down.get_or_insert_with(|| detail.clone());
                }
                Err(PublishError::Timeout) => {
                    down.get_or_insert_with(|| "no answer within the publish timeout".into());
                }
                _ => {}
            }
            outcomes[i] = Some(outcome);
        }
        match down {
            Some(reason) => self.hold_off.failed(&reason),
            None if sent => self.hold_off.succeeded(),
            None => {}
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(PublishError::Transient("not sent".into()))))
            .collect()
    }

    fn destination(&self, event: &OutboxEvent) -> String {
        match self.queue_for(event) {
            Some(queue) => queue_name(queue),
            None => "unrouted".to_owned(),
        }
    }

    fn destinations(&self) -> Vec<String> {
        let mut names: Vec<String> = self.queues().into_iter().map(queue_name).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    async fn close(&self) {}
}

/// The destination label of a queue URL: its last path segment (the queue's name).
fn queue_name(queue: &str) -> String {
    queue.rsplit('/').next().unwrap_or(queue).to_owned()
}

#[cfg(test)]
mod tests {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

    use super::*;

    fn publisher(config: &SqsConfig) -> SqsPublisher {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(Credentials::new("a", "b", None, None, "test"))
            .build();
        SqsPublisher::with_client(Client::from_conf(conf), config, Duration::from_secs(1))
    }

    fn event(aggregate_type: &str) -> OutboxEvent {
        OutboxEvent {
            aggregate_type: aggregate_type.into(),
            ..OutboxEvent::fixture()
        }
    }

    #[test]
    fn routes_pick_the_queue_and_name_the_destination() {
        let mut config = SqsConfig {
            queue_url: "https://sqs.eu-west-1.amazonaws.com/1/orders".into(),
            ..SqsConfig::default()
        };
        config.routes.insert(
            "invoice".into(),
            "https://sqs.eu-west-1.amazonaws.com/1/invoices.fifo".into(),
        );
        let p = publisher(&config);
        assert_eq!(p.destination(&event("order")), "orders");
        assert_eq!(p.destination(&event("invoice")), "invoices.fifo");
        assert_eq!(p.queues().len(), 2);
        // Every destination label, exported at 0 from start-up.
        assert_eq!(p.destinations(), ["invoices.fifo", "orders"]);

        config.queue_url = String::new();
        let p = publisher(&config);
        assert_eq!(p.queue_for(&event("order")), None);
        assert_eq!(p.destination(&event("order")), "unrouted");
    }

    #[tokio::test]
    async fn unrouted_events_are_rejected_without_a_call() {
        let mut config = SqsConfig::default();
        config
            .routes
            .insert("invoice".into(), "http://127.0.0.1:9/1/invoices".into());
        let p = publisher(&config);
        let got = p.publish(&[event("order")]).await;
        assert!(
            matches!(&got[0], Err(PublishError::Rejected(r)) if r.contains("`order`")),
            "{got:?}"
        );
        assert!(p.hold_off.remaining().is_none(), "no call, no hold-off");
    }

    #[test]
    fn a_queue_limit_lowers_the_configured_one() {
        let config = SqsConfig {
            queue_url: "q".into(),
            max_message_bytes: 4096,
            ..SqsConfig::default()
        };
        let p = publisher(&config);
        assert_eq!(p.limit_for("q"), 4096);
        p.queue_limits.write().unwrap().insert("q".into(), 1024);
        assert_eq!(p.limit_for("q"), 1024);
        p.queue_limits.write().unwrap().insert("q".into(), 1 << 20);
        assert_eq!(p.limit_for("q"), 4096);
    }
}
