//! What a consumer received, checked: the test queue drained, distinct deliveries and
//! duplicates counted, per-aggregate order of first deliveries.

use std::collections::{HashMap, HashSet};

use super::{Received, TestBroker, receive_n};

/// Every message in the test queue, in queue order. Call once publishing has stopped: the
/// queue depth (all confirmed messages are enqueued) says how many to expect.
pub async fn drain_queue(broker: &TestBroker) -> Vec<Received> {
    let (n, _) = broker.queue_state().await;
    let n = n as usize;
    let mut rx = broker.consume().await;
    receive_n(&mut rx, n).await
}

/// What a delivery log says about order and duplicates.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Distinct event IDs delivered.
    pub unique: usize,
    /// Deliveries beyond the first, per event ID.
    pub duplicates: HashMap<String, usize>,
}

/// Counts distinct deliveries and duplicates (no order check).
pub fn count_deliveries(messages: &[Received]) -> Deliveries {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in messages {
        *seen.entry(m.message_id.clone()).or_insert(0) += 1;
    }
    Deliveries {
        unique: seen.len(),
        duplicates: seen
            .into_iter()
            .filter(|(_, c)| *c > 1)
            .map(|(id, c)| (id, c - 1))
            .collect(),
    }
}

/// Checks that, per aggregate, the *first* delivery of each event follows write order
/// (`n` = 1, 2, 3, ... in the payload) starting after `last[aggregate]`; panics otherwise.
pub fn check_first_deliveries(
    messages: &[Received],
    last: &mut HashMap<String, i64>,
) -> Deliveries {
    let mut seen = HashSet::new();
    for m in messages {
        if !seen.insert(&m.message_id) {
            continue;
        }
        let aggregate = m.header("x-aggregate-id").unwrap().to_owned();
        let n = serde_json::from_str::<serde_json::Value>(&m.body).unwrap()["n"]
            .as_i64()
            .unwrap();
        let prev = last.insert(aggregate.clone(), n).unwrap_or(0);
        assert_eq!(
            n,
            prev + 1,
            "aggregate {aggregate}: first delivery of {n} after {prev}"
        );
    }
    count_deliveries(messages)
}
