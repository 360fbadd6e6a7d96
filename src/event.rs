//! The event types every side of the relay shares: [`OutboxEvent`], a pending row as the
//! store reads it and a broker sends it, and [`NewEvent`], what an application writes.
//! They live here, below both `store/` and `broker/`, so the broker side never depends on
//! the SQL side. Unit tests build events with `OutboxEvent::fixture()`.

use std::time::SystemTime;

use uuid::Uuid;

/// A pending event read for publishing.
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
    /// A header value by name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
impl OutboxEvent {
    /// The one test event every unit test starts from: `order` / `42` / `created`, `seq` 1,
    /// the nil ID, payload `{}`, no headers, written at the epoch, bucket 0. Tests change what
    /// they care about with struct update syntax: `OutboxEvent { seq: 2, ..OutboxEvent::fixture() }`.
    pub(crate) fn fixture() -> Self {
        Self {
            id: Uuid::nil(),
            seq: 1,
            aggregate_type: "order".into(),
            aggregate_id: "42".into(),
            event_type: "created".into(),
            payload: "{}".into(),
            headers: Vec::new(),
            created_at: SystemTime::UNIX_EPOCH,
            attempts: 0,
            bucket: 0,
        }
    }
}

/// An event to write with [`crate::store::enqueue`].
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
