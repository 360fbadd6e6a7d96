//! Part 7, the SQS variant against the emulator at `OUTBOX_TEST_SQS`: the emulator's own
//! SendMessageBatch rate and the relay draining a backlog into it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use outbox_relay::broker::sqs::message;
use uuid::Uuid;

use crate::{
    drain::{Drain, spawn_relay, stop, wait_drained},
    fixtures::{Backlog, connect, drop_db, prefilled_db, sample_event},
};

fn sqs_endpoint() -> String {
    std::env::var("OUTBOX_TEST_SQS").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

fn sqs_client() -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(sqs_endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

async fn sqs_queue(client: &aws_sdk_sqs::Client) -> String {
    client
        .create_queue()
        .queue_name(format!("outbox-bench-{}", Uuid::new_v4().simple()))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

/// SendMessageBatch calls in flight for the raw measurement: the emulator's best here (8 did
/// 197 msg/s, 32 did 161: moto serializes sends, more concurrency only queues). The relay
/// itself may have up to 16 calls per batch in flight, 4 batches at once.
pub const SQS_IN_FLIGHT: usize = 8;

/// 7a. The emulator's own limit: SendMessageBatch of 10 entries, 8 calls in flight, each
/// entry exactly what the relay sends for such an event (same body and attributes).
pub async fn raw_sqs(n: usize, payload: usize, aggregates: usize) -> f64 {
    let client = sqs_client();
    let queue = sqs_queue(&client).await;
    let body = serde_json::json!({ "i": 0, "pad": "x".repeat(payload.saturating_sub(40)) });
    let entries: Vec<_> = (0..n)
        .map(|i| {
            let event = sample_event(i, aggregates, body.to_string());
            message::build(&event, i % 10, false, 1 << 20)
                .unwrap()
                .entry
        })
        .collect();
    let batches: Vec<Vec<_>> = entries.chunks(10).map(<[_]>::to_vec).collect();
    let started = Instant::now();
    futures::stream::iter(batches)
        .map(|batch| {
            let client = client.clone();
            let queue = queue.clone();
            async move {
                let out = client
                    .send_message_batch()
                    .queue_url(queue)
                    .set_entries(Some(batch))
                    .send()
                    .await
                    .unwrap();
                assert!(out.failed().is_empty(), "{:?}", out.failed());
            }
        })
        .buffer_unordered(SQS_IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = client.delete_queue().queue_url(queue).send().await;
    rate
}

/// 7b. The relay draining a backlog into an emulator queue.
pub async fn relay_drain_sqs(b: Backlog, batch: usize, timeout: Duration) -> Drain {
    let (name, url) = prefilled_db(b).await;
    let client = sqs_client();
    let queue = sqs_queue(&client).await;
    let db = connect(&url).await;
    let started = Instant::now();
    let endpoint = sqs_endpoint();
    let relay = spawn_relay(
        &url,
        "unused",
        batch,
        &[
            ("OUTBOX_RELAY_BROKER__KIND", "sqs"),
            ("OUTBOX_RELAY_BROKER__SQS__QUEUE_URL", queue.as_str()),
            ("OUTBOX_RELAY_BROKER__SQS__ENDPOINT_URL", endpoint.as_str()),
            ("OUTBOX_RELAY_BROKER__SQS__REGION", "us-east-1"),
            // The emulator slows down as its queue grows (moto: O(queue length) per send);
            // a long timeout keeps its slowness from reading as an outage.
            ("OUTBOX_RELAY_RELAY__PUBLISH_TIMEOUT", "60s"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let mut relays = [relay];
    let drain = wait_drained(&db, b.events, (started, started), timeout, &mut relays).await;
    let [relay] = relays;
    stop(relay);
    let _ = client.delete_queue().queue_url(queue).send().await;
    drop_db(&name).await;
    drain
}
