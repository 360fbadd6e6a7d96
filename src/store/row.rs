//! Decoding a row of the outbox table into an [`OutboxEvent`] (the type itself lives in
//! [`crate::event`]).

use tokio_postgres::Row;

use super::StoreError;
use crate::event::OutboxEvent;

/// The event in `row`, a row of the read query (`id`, `seq`, ..., `bucket`).
pub(crate) fn event(row: &Row) -> Result<OutboxEvent, StoreError> {
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
    Ok(OutboxEvent {
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
