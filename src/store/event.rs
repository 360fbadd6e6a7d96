//! The row types: [`OutboxEvent`] as claimed by the relay and [`NewEvent`] as written by an
//! application.

use std::time::SystemTime;

use tokio_postgres::Row;
use uuid::Uuid;

use super::StoreError;

/// A pending event claimed for publishing.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Event ID: the broker message ID and the consumers' dedupe key.
    pub id: Uuid,
    /// Write order; per-aggregate order follows it.
    pub seq: i64,
    /// E.g. `order`.
    pub aggregate_type: String,
    /// The aggregate instance; events of one aggregate are published in `seq` order.
    pub aggregate_id: String,
    /// E.g. `order.created`.
    pub event_type: String,
    /// The payload as JSON text (the message body).
    pub payload: String,
    /// The row's `headers` object; non-string JSON values are carried as their JSON text.
    pub headers: Vec<(String, String)>,
    /// When the producer wrote the event.
    pub created_at: SystemTime,
    /// Failed attempts so far.
    pub attempts: i32,
    /// The aggregate's hash bucket (replica ownership unit).
    pub bucket: i32,
}

impl OutboxEvent {
    pub(crate) fn from_row(row: &Row) -> Result<Self, StoreError> {
        let headers: serde_json::Value = row.try_get("headers")?;
        let headers = match headers {
            serde_json::Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            id: row.try_get("id")?,
            seq: row.try_get("seq")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            event_type: row.try_get("event_type")?,
            payload: row.try_get("payload")?,
            headers,
            created_at: row.try_get("created_at")?,
            attempts: row.try_get("attempts")?,
            bucket: row
                .try_get::<_, Option<i32>>("bucket")
                .ok()
                .flatten()
                .unwrap_or(0),
        })
    }

    /// A header value by name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An event to write with [`super::enqueue`].
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// Optional explicit ID (generated when `None`).
    pub id: Option<Uuid>,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// String headers (e.g. `traceparent`).
    pub headers: Vec<(String, String)>,
}
