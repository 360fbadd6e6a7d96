//! RabbitMQ backend (lapin): one connection with a small pool of confirm-mode channels and a
//! durable topic exchange declared at connect. Messages are published `mandatory`,
//! persistent, with the event ID as `message_id`; confirms are awaited together after the
//! whole slice was sent (pipelined).
//!
//! Each `publish` call holds one channel exclusively. That is what makes `basic.return`
//! attributable: lapin hands a returned message to whichever confirm of the channel completes
//! next (with `multiple` acks, an arbitrary one), not to the confirm of the message that was
//! returned. With the channel to itself, every return that arrives before the call's last
//! ack belongs to one of its own messages, and is matched to its event by `message_id`
//! ([`outcomes`]), never by the confirm that happened to carry it.
//!
//! Submodules: `channels` holds the channel pool (connect, lend, give back), [`message`]
//! builds a message's properties (the message contract), [`outcome`] matches confirms and
//! returns to events.

mod channels;
pub mod message;
pub mod outcome;

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use lapin::{
    Channel, Confirmation, Connection, options::BasicPublishOptions, tcp::OwnedTLSConfig,
    types::ShortString,
};
use tokio::sync::Semaphore;

use self::outcome::returned_id;
use super::{Outcome, PublishError, Publisher};
use crate::{
    config::{RabbitMqConfig, RoutingTemplate},
    event::OutboxEvent,
};

pub use message::message_properties;
pub use outcome::{Confirmed, outcomes};

/// How long closing a connection being replaced may take (one that stopped answering never
/// acknowledges the close).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// `url` asking for a heartbeat of `heartbeat` (whole seconds, `0` off) unless it names one:
/// lapin otherwise takes the server's (60 s by default, so ~2 minutes to notice a connection
/// that stopped answering).
fn with_heartbeat(url: &str, heartbeat: Duration) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned(); // reported by the connection attempt
    };
    if parsed.query_pairs().any(|(k, _)| k == "heartbeat") {
        return url.to_owned();
    }
    parsed
        .query_pairs_mut()
        .append_pair("heartbeat", &heartbeat.as_secs().to_string());
    parsed.to_string()
}

/// Channels opened per connection unless [`RabbitMqPublisher::with_channels`] says otherwise.
pub const DEFAULT_CHANNELS: usize = 4;

/// Publishes to a RabbitMQ topic exchange.
pub struct RabbitMqPublisher {
    url: String,
    exchange: String,
    routing: RoutingTemplate,
    tls: OwnedTLSConfig,
    publish_timeout: Duration,
    channel_count: usize,
    /// The live connection; `None` until connected (the next `connect` rebuilds it and its
    /// channels once `poisoned` is set).
    session: tokio::sync::Mutex<Option<Connection>>,
    /// The live connection's state, readable without awaiting `session`.
    status: Mutex<Option<lapin::ConnectionStatus>>,
    /// Idle channels of the current generation, tagged with it.
    idle: Mutex<Vec<(u64, Channel)>>,
    /// One permit per channel: a publish call holds one channel to itself.
    permits: Semaphore,
    /// Bumped on every reconnect: channels of older generations are dropped when returned.
    generation: AtomicU64,
    /// A publish saw the connection fail: publish nothing until `connect` rebuilt it.
    poisoned: AtomicBool,
}

impl RabbitMqPublisher {
    /// Builds the publisher (no I/O; call [`Publisher::connect`]).
    pub fn new(config: &RabbitMqConfig, publish_timeout: Duration) -> Result<Self, PublishError> {
        let cert_chain = match &config.ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                PublishError::Unavailable(format!("cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
        Ok(Self {
            url: with_heartbeat(&config.url, config.heartbeat),
            exchange: config.exchange.clone(),
            routing: config.routing_key.clone(),
            tls: OwnedTLSConfig {
                identity: None,
                cert_chain,
            },
            publish_timeout,
            channel_count: DEFAULT_CHANNELS,
            session: tokio::sync::Mutex::new(None),
            status: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(DEFAULT_CHANNELS),
            generation: AtomicU64::new(0),
            poisoned: AtomicBool::new(true),
        })
    }

    /// Opens `count` channels (at least 1) per connection: as many publish calls can be in
    /// flight at once (the relay passes `relay.publish_channels`).
    pub fn with_channels(mut self, count: usize) -> Self {
        let count = count.max(1);
        self.channel_count = count;
        self.permits = Semaphore::new(count);
        self
    }

    /// `host:port` of the broker, for messages.
    fn server(&self) -> String {
        url::Url::parse(&self.url)
            .ok()
            .map(|u| {
                let port = u
                    .port()
                    .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 });
                format!("{}:{port}", u.host_str().unwrap_or("localhost"))
            })
            .unwrap_or_else(|| "the broker".into())
    }
}

impl Publisher for RabbitMqPublisher {
    async fn connect(&self) -> Result<(), PublishError> {
        let mut session = self.session.lock().await;
        // Healthy and not poisoned by a failed publish: keep it.
        if let Some(connection) = session.as_ref()
            && connection.status().connected()
            && !self.poisoned.load(Ordering::SeqCst)
        {
            return Ok(());
        }
        if let Some(old) = session.take() {
            // A connection that stopped answering never acknowledges the close.
            let closing = old.close(200, ShortString::from("reconnecting"));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        }
        let opened = tokio::time::timeout(self.publish_timeout, self.open())
            .await
            .map_err(|_| {
                PublishError::Unavailable(format!(
                    "no answer from {} within {} (relay.publish_timeout)",
                    self.server(),
                    humantime::format_duration(self.publish_timeout)
                ))
            })?;
        let (connection, channels) = opened.map_err(|e| {
            PublishError::Unavailable(
                crate::tls::describe(&e, &self.server()).unwrap_or_else(|| e.to_string()),
            )
        })?;
        // Channels still lent out belong to the old generation and are dropped on return.
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.idle() = channels.into_iter().map(|c| (generation, c)).collect();
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.status().clone());
        self.poisoned.store(false, Ordering::SeqCst);
        *session = Some(connection);
        Ok(())
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        let Ok(_permit) = self.permits.acquire().await else {
            return vec![Err(PublishError::Unavailable("publisher closed".into())); events.len()];
        };
        let Some((generation, channel)) = self.take_channel() else {
            return vec![Err(PublishError::Unavailable("not connected".into())); events.len()];
        };
        // One deadline for the whole call: sending (a connection that stopped answering stops
        // taking frames once its buffers fill) and the confirms.
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        let mut outcomes_by_index: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut pending = Vec::with_capacity(events.len());
        let mut healthy = true;
        for (i, event) in events.iter().enumerate() {
            let routing_key = self.routing.render(event);
            if routing_key.len() > 255 {
                outcomes_by_index[i] = Some(Err(PublishError::Rejected(format!(
                    "routing key is {} bytes, AMQP allows 255",
                    routing_key.len()
                ))));
                continue;
            }
            let sending = channel.basic_publish(
                ShortString::from(self.exchange.as_str()),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                event.payload.as_bytes(),
                message_properties(event),
            );
            let sent = tokio::time::timeout_at(deadline, sending)
                .await
                .map_err(|_| PublishError::Timeout)
                .and_then(|sent| sent.map_err(|e| PublishError::Unavailable(e.to_string())));
            match sent {
                Ok(confirm) => pending.push((i, confirm)),
                Err(error) => {
                    // The channel is gone or stuck: nothing after this can be sent either.
                    healthy = false;
                    for slot in outcomes_by_index.iter_mut().skip(i) {
                        slot.get_or_insert_with(|| Err(error.clone()));
                    }
                    break;
                }
            }
        }
        let (indices, confirms): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        match tokio::time::timeout_at(deadline, join_all(confirms)).await {
            Ok(results) => {
                let mut returned = HashMap::new();
                let mut confirmed = Vec::with_capacity(results.len());
                for result in results {
                    confirmed.push(match result {
                        Ok(Confirmation::Ack(message)) => {
                            returned.extend(message.and_then(|m| returned_id(&m)));
                            Ok(Confirmed::Ack)
                        }
                        Ok(Confirmation::Nack(message)) => {
                            returned.extend(message.and_then(|m| returned_id(&m)));
                            Ok(Confirmed::Nack)
                        }
                        Ok(Confirmation::NotRequested) => Err(PublishError::Unavailable(
                            "channel is not in confirm mode".into(),
                        )),
                        Err(e) => {
                            healthy = false;
                            Err(PublishError::Unavailable(e.to_string()))
                        }
                    });
                }
                let sent: Vec<&OutboxEvent> = indices.iter().map(|&i| &events[i]).collect();
                let settled = outcomes(&sent, confirmed, &returned, |event, reply| {
                    format!(
                        "{reply} (exchange `{}`, routing key `{}`)",
                        self.exchange,
                        self.routing.render(event)
                    )
                });
                for (i, outcome) in indices.into_iter().zip(settled) {
                    outcomes_by_index[i] = Some(outcome);
                }
            }
            Err(_) => {
                // Confirms may never come on this channel: rebuild before the next publish.
                healthy = false;
                for i in indices {
                    outcomes_by_index[i] = Some(Err(PublishError::Timeout));
                }
            }
        }
        self.give_back(generation, channel, healthy);
        outcomes_by_index
            .into_iter()
            .map(|o| o.unwrap_or(Err(PublishError::Unavailable("not published".into()))))
            .collect()
    }

    fn destination(&self, _event: &OutboxEvent) -> String {
        self.exchange.clone()
    }

    fn destinations(&self) -> Vec<String> {
        vec![self.exchange.clone()]
    }

    fn lost(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
            || self
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|status| !status.connected())
    }

    async fn close(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
        let channels = std::mem::take(&mut *self.idle());
        for (_, channel) in channels {
            let _ = channel.close(200, ShortString::from("shutdown")).await;
        }
        if let Some(connection) = self.session.lock().await.take() {
            let _ = connection.close(200, ShortString::from("shutdown")).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_asked_for_unless_the_url_names_one() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            with_heartbeat("amqp://guest:guest@127.0.0.1:5672/%2f", ten),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqps://mq:5671/prod?channel_max=8", ten),
            "amqps://mq:5671/prod?channel_max=8&heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://mq/%2f?heartbeat=30", ten),
            "amqp://mq/%2f?heartbeat=30"
        );
        assert_eq!(with_heartbeat("not a url", ten), "not a url");
    }
}
