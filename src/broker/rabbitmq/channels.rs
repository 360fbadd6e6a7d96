//! The channel pool of [`RabbitMqPublisher`]: opening the connection with its confirm-mode
//! channels (and declaring the exchange), lending one channel to each publish call, and taking
//! it back, or dropping it and poisoning the session when it failed. Channels are tagged with
//! the connection generation they belong to, so one lent out before a reconnect is dropped on
//! return.

use std::sync::atomic::Ordering;

use lapin::{
    Channel, Connection, ConnectionProperties, DefaultConnectionBuilder, ExchangeKind,
    options::{ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{FieldTable, LongString, ShortString},
};

use super::RabbitMqPublisher;

impl RabbitMqPublisher {
    pub(super) fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Channel)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes an idle channel of the current generation (the caller holds a permit).
    pub(super) fn take_channel(&self) -> Option<(u64, Channel)> {
        if self.poisoned.load(Ordering::SeqCst) {
            return None;
        }
        self.idle().pop()
    }

    /// Returns a channel after use, or drops it (and poisons the session) when it failed.
    /// A channel of an older generation is dropped either way: its failure says nothing
    /// about the connection that replaced it.
    pub(super) fn give_back(&self, generation: u64, channel: Channel, healthy: bool) {
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
    pub(super) async fn open(&self) -> Result<(Connection, Vec<Channel>), lapin::Error> {
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
