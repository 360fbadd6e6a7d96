//! Turning an [`OutboxEvent`] into AMQP message properties: the message contract (message ID,
//! persistence, content type, type, timestamp and headers).

use std::time::UNIX_EPOCH;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::event::OutboxEvent;

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
