//! The consumer side of effectively-once: an inbox table in the consumer's database
//! (`outbox_inbox` by default, `inbox.table`; created by `outbox-relay migrate --inbox`) that
//! records which message IDs a consumer has processed.
//!
//! A consumer records a batch of message IDs with [`Inbox::record`] inside the transaction
//! that applies the messages' side effects, applies only the [`Recorded::new`] ones, commits,
//! and only then acks. A redelivery (relay crash between confirm and mark, consumer crash
//! between commit and ack, SQS visibility timeout) finds its ID recorded and is skipped; a
//! crash before the commit rolls back the IDs together with the side effects. Rows older than
//! the dedupe window are deleted by [`purge`] (`outbox-relay purge --inbox --older-than`).

use std::{collections::HashSet, time::Duration};

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::{
    config::TableName,
    store::{StoreError, retention},
};

/// One consumer's view of the inbox table.
#[derive(Debug, Clone)]
pub struct Inbox {
    /// The consumer's name: each consumer (service) dedupes on its own, so two services can
    /// process the same event.
    consumer: String,
    /// The batch insert, rendered for the table.
    record_sql: String,
}

/// What [`Inbox::record`] found, each list in the order the IDs were given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// First seen now: apply these.
    pub new: Vec<Uuid>,
    /// Already recorded (by an earlier transaction, or earlier in the same batch): skip.
    pub duplicates: Vec<Uuid>,
}

impl Inbox {
    /// The inbox `table` as seen by `consumer`.
    pub fn new(table: &TableName, consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            record_sql: format!(
                "INSERT INTO {} (consumer, message_id) SELECT $1, unnest($2::uuid[]) \
                 ON CONFLICT DO NOTHING RETURNING message_id",
                table.qualified()
            ),
        }
    }

    /// Records `ids` in one statement; call it inside the transaction that applies the
    /// messages. A concurrent transaction recording one of the same IDs for this consumer
    /// waits for this one to end, then sees it as a duplicate if this one committed.
    pub async fn record(
        &self,
        client: &impl GenericClient,
        ids: &[Uuid],
    ) -> Result<Recorded, StoreError> {
        if ids.is_empty() {
            return Ok(Recorded::default());
        }
        let rows = client
            .query(&self.record_sql, &[&self.consumer, &ids])
            .await?;
        let mut inserted = rows
            .iter()
            .map(|row| row.try_get::<_, Uuid>(0))
            .collect::<Result<HashSet<_>, _>>()?;
        let mut recorded = Recorded::default();
        for id in ids {
            // `remove`: a second copy of one ID in the same batch is a duplicate.
            if inserted.remove(id) {
                recorded.new.push(*id);
            } else {
                recorded.duplicates.push(*id);
            }
        }
        Ok(recorded)
    }
}

/// Deletes inbox rows (of every consumer) received more than `older_than` ago, `batch` rows
/// per statement, until a statement deletes fewer; returns how many. `older_than` is the
/// dedupe window: it must outlast the broker's longest redelivery.
pub async fn purge(
    client: &impl GenericClient,
    table: &TableName,
    older_than: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let t = table.qualified();
    let sql = format!(
        "DELETE FROM {t} WHERE (consumer, message_id) IN ( \
           SELECT consumer, message_id FROM {t} \
           WHERE received_at < now() - $1::int8 * interval '1 millisecond' \
           ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
    );
    let older_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let sql = &sql;
    retention::in_batches(
        batch,
        || async move { Ok(client.execute(sql, &[&older_ms, &batch]).await?) },
        |_| {},
    )
    .await
}
