//! Producers for tests that need load: a steady writer of numbered events, and a backlog
//! written in one statement.

use tokio_util::sync::CancellationToken;

use super::{connect, insert_event};

/// Writes numbered events (`{"n": 1, 2, ...}` per aggregate) one per transaction, round-robin
/// over `aggregates` aggregates named `<prefix>-<i>`, until stopped.
pub struct Producer {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<usize>,
}

impl Producer {
    pub fn start(url: &str, prefix: &str, aggregates: usize) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        let handle = tokio::spawn(async move {
            let client = connect(&url).await;
            let mut i = 0;
            while !token.is_cancelled() {
                let aggregate = format!("{prefix}-{}", i % aggregates);
                let n = i / aggregates + 1;
                insert_event(
                    &client,
                    "order",
                    &aggregate,
                    "step",
                    serde_json::json!({ "n": n }),
                )
                .await;
                i += 1;
            }
            i
        });
        Self { stop, handle }
    }

    /// Stops writing; returns the number of events written.
    pub async fn stop(self) -> usize {
        self.stop.cancel();
        self.handle.await.unwrap()
    }
}

/// Inserts `per_aggregate` numbered events for each of `aggregates` aggregates named
/// `<prefix>-<i>` in one statement (write order: n = 1 for all, then n = 2, ...).
pub async fn insert_backlog(
    client: &tokio_postgres::Client,
    prefix: &str,
    aggregates: i64,
    per_aggregate: i64,
) {
    client
        .execute(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', $1::text || '-' || (i % $2::int8), 'step', \
                    jsonb_build_object('n', i / $2::int8 + 1) \
             FROM generate_series(0::int8, $2::int8 * $3::int8 - 1) i ORDER BY i",
            &[&prefix, &aggregates, &per_aggregate],
        )
        .await
        .unwrap();
}
