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

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, UNIX_EPOCH},
};

use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    DefaultConnectionBuilder, ExchangeKind,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    tcp::OwnedTLSConfig,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::Semaphore;

use super::{Outcome, PublishError, Publisher};
use crate::{
    config::{RabbitMqConfig, RoutingTemplate},
    event::OutboxEvent,
};

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
            url: config.url.clone(),
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

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Channel)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes an idle channel of the current generation (the caller holds a permit).
    fn take_channel(&self) -> Option<(u64, Channel)> {
        if self.poisoned.load(Ordering::SeqCst) {
            return None;
        }
        self.idle().pop()
    }

    /// Returns a channel after use, or drops it (and poisons the session) when it failed.
    /// A channel of an older generation is dropped either way: its failure says nothing
    /// about the connection that replaced it.
    fn give_back(&self, generation: u64, channel: Channel, healthy: bool) {
        if generation != self.generation.load(Ordering::SeqCst) {
            return;
        }
        if healthy && channel.status().connected() {
            self.idle().push((generation, channel));
        } else {
            self.poisoned.store(true, Ordering::SeqCst);
        }
    }

    /// Connects, declares the exchange, and opens the channels in confirm mode.
    async fn open(&self) -> Result<(Connection, Vec<Channel>), lapin::Error> {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("outbox-relay"));
        let connection = DefaultConnectionBuilder::new()?
            .with_uri_str(self.url.clone())
            .with_properties(properties)
            .with_tls_config(self.tls.clone())
            .connect()
            .await?;
        let mut channels = Vec::with_capacity(self.channel_count);
        for _ in 0..self.channel_count {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        if let Some(channel) = channels.first() {
            channel
                .exchange_declare(
                    ShortString::from(self.exchange.as_str()),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok((connection, channels))
    }
}

/// The AMQP properties the relay publishes an event with: `message_id` (the event ID),
/// persistent delivery, `content_type`, `type`, `timestamp`, and the row's headers plus
/// `x-aggregate-type`, `x-aggregate-id`, `x-event-type` (strings) and `x-seq` (long-long
/// integer) (the message contract in the README). Public so the benchmark's raw limit sends exactly these.
pub fn message_properties(event: &OutboxEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in &event.headers {
        headers.insert(
            ShortString::from(key.as_str()),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    for (key, value) in [
        ("x-aggregate-type", &event.aggregate_type),
        ("x-aggregate-id", &event.aggregate_id),
        ("x-event-type", &event.event_type),
    ] {
        headers.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    // The write order, so consumers can tell a stale version from a fresh one.
    headers.insert(
        ShortString::from("x-seq"),
        AMQPValue::LongLongInt(event.seq),
    );
    let timestamp = event
        .created_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BasicProperties::default()
        .with_message_id(ShortString::from(event.id.to_string()))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_type(ShortString::from(event.event_type.as_str()))
        .with_timestamp(timestamp)
        .with_headers(headers)
}

/// What the broker said about one message of a call: acked or nacked (by delivery tag).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Confirmed {
    /// `basic.ack`.
    Ack,
    /// `basic.nack`.
    Nack,
}

/// Outcomes of one call, given each message's confirm (`None`: the confirm failed, with the
/// error) and the `message_id`s of every message the broker returned on the call's channel,
/// whichever confirm carried them, with the broker's reply text. A returned message is
/// unroutable even when acked (the broker acks a message it could not route); a nack wins
/// over a return.
pub fn outcomes(
    events: &[&OutboxEvent],
    confirms: Vec<Result<Confirmed, PublishError>>,
    returned: &HashMap<String, String>,
    describe_return: impl Fn(&OutboxEvent, &str) -> String,
) -> Vec<Outcome> {
    events
        .iter()
        .zip(confirms)
        .map(|(event, confirm)| match confirm {
            Err(error) => Err(error),
            Ok(Confirmed::Nack) => Err(PublishError::Nacked),
            Ok(Confirmed::Ack) => match returned.get(&event.id.to_string()) {
                Some(reply) => Err(PublishError::Unroutable(describe_return(event, reply))),
                None => Ok(()),
            },
        })
        .collect()
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
            let _ = old.close(200, ShortString::from("reconnecting")).await;
        }
        let (connection, channels) = self.open().await.map_err(|e| {
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
            let sent = channel
                .basic_publish(
                    ShortString::from(self.exchange.as_str()),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    event.payload.as_bytes(),
                    message_properties(event),
                )
                .await;
            match sent {
                Ok(confirm) => pending.push((i, confirm)),
                Err(e) => {
                    // The channel is gone: nothing after this can be sent either.
                    healthy = false;
                    let error = PublishError::Unavailable(e.to_string());
                    for slot in outcomes_by_index.iter_mut().skip(i) {
                        slot.get_or_insert_with(|| Err(error.clone()));
                    }
                    break;
                }
            }
        }
        let (indices, confirms): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        match tokio::time::timeout(self.publish_timeout, join_all(confirms)).await {
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

/// The event ID a returned message carries as its `message_id`, with the broker's reply.
fn returned_id(message: &lapin::message::BasicReturnMessage) -> Option<(String, String)> {
    let id = message
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string());
    if id.is_none() {
        tracing::warn!(
            routing_key = %message.routing_key,
            "broker returned a message without message_id; ignoring it"
        );
    }
    id.map(|id| (id, message.reply_text.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use uuid::Uuid;

    use super::*;

    fn event() -> OutboxEvent {
        OutboxEvent {
            id: Uuid::new_v4(),
            seq: 1,
            aggregate_type: "t".into(),
            aggregate_id: "a".into(),
            event_type: "e".into(),
            payload: "{}".into(),
            headers: vec![],
            created_at: SystemTime::now(),
            attempts: 0,
            bucket: 0,
        }
    }

    #[test]
    fn a_return_is_matched_by_message_id_not_by_the_confirm_that_carried_it() {
        // GIVEN three acked messages where the broker returned the second one
        let events = [event(), event(), event()];
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let returned = HashMap::from([(events[1].id.to_string(), "NO_ROUTE".to_owned())]);
        let confirms = vec![Ok(Confirmed::Ack), Ok(Confirmed::Ack), Ok(Confirmed::Ack)];

        // WHEN the outcomes are derived
        let got = outcomes(&refs, confirms, &returned, |_, reply| reply.to_owned());

        // THEN only the returned one is unroutable
        assert_eq!(
            got,
            vec![
                Ok(()),
                Err(PublishError::Unroutable("NO_ROUTE".into())),
                Ok(())
            ]
        );
    }

    #[test]
    fn nacks_and_confirm_errors_win_over_returns() {
        let events = [event(), event()];
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let returned: HashMap<String, String> = events
            .iter()
            .map(|e| (e.id.to_string(), "NO_ROUTE".to_owned()))
            .collect();
        let confirms = vec![Ok(Confirmed::Nack), Err(PublishError::Timeout)];
        let got = outcomes(&refs, confirms, &returned, |_, reply| reply.to_owned());
        assert_eq!(
            got,
            vec![Err(PublishError::Nacked), Err(PublishError::Timeout)]
        );
    }
}
