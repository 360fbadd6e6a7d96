//! Part 4: the notify wake-up latency, commit to consumer, at a steady rate of one event
//! per transaction against a running relay.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use lapin::{options::BasicConsumeOptions, types::FieldTable};

use crate::{
    drain::{spawn_relay, stop},
    fixtures::{broker_cleanup, connect, drop_db, fresh_broker, fresh_db},
};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// 4. Commit-to-consumer latency at a steady rate, one event per transaction.
pub async fn latency(secs: u64, rate: u64) -> (f64, f64, f64, usize) {
    let (name, url) = fresh_db().await;
    let (conn, exchange, queue) = fresh_broker().await;
    let relay = spawn_relay(&url, &exchange, 500, &[]);
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let total = (secs * rate) as usize;
    let commits: Arc<std::sync::Mutex<std::collections::HashMap<i64, u64>>> = Default::default();
    // Let the relay start and go idle before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let producer = {
        let url = url.clone();
        let commits = commits.clone();
        tokio::spawn(async move {
            let client = connect(&url).await;
            let stmt = client
                .prepare(
                    "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('order', $1, 'created', jsonb_build_object('k', $2::int8))",
                )
                .await
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for k in 0..total as i64 {
                tick.tick().await;
                client
                    .execute(&stmt, &[&(k % 1000).to_string(), &k])
                    .await
                    .unwrap();
                commits.lock().unwrap().insert(k, now_micros());
            }
        })
    };
    let mut lat = Vec::with_capacity(total);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < total {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let Ok(Some(Ok(d))) = d else { break };
        let arrived = now_micros();
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        let k = body["k"].as_i64().unwrap();
        if seen.insert(k) {
            let committed = loop {
                if let Some(t) = commits.lock().unwrap().get(&k).copied() {
                    break t;
                }
                tokio::task::yield_now().await;
            };
            lat.push(arrived.saturating_sub(committed) as f64 / 1000.0);
        }
    }
    producer.await.unwrap();
    stop(relay);
    broker_cleanup(&conn, &exchange, &queue).await;
    drop_db(&name).await;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    (pct(0.5), pct(0.99), *lat.last().unwrap_or(&0.0), lat.len())
}
