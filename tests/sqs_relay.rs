//! The SQS backend end to end against the emulator (moto): standard and FIFO queues, the
//! message contract, per-group order, oversized events (the relay's limit and the queue's),
//! a batch refused as a whole, per-entry failures, an unreachable endpoint, and whole-call
//! errors (throttling, 5xx, access denied) injected by an HTTP proxy in front of moto.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashMap, time::Duration};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use common::{
    metrics::value,
    proxy::Proxy,
    publisher::{Fault, Faulty},
    sqs, *,
};
use outbox_relay::broker::PublishError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_queue_gets_body_attributes_and_traceparent() {
    // GIVEN a standard queue and a relay publishing to it
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let queue = sqs::create_queue(&client, false).await;
    let config = sqs::sqs_config(&db, &queue);
    let relay = start_relay_with(&config, sqs::publisher(&config));
    let pg = db.client().await;

    // WHEN events are written, one with a traceparent, more headers than SQS allows and a
    // header named like a fixed attribute
    let mut headers = serde_json::Map::new();
    for i in 0..12 {
        headers.insert(format!("h{i:02}"), serde_json::json!("v"));
    }
    headers.insert("event_id".into(), serde_json::json!("spoofed"));
    headers.insert(
        "traceparent".into(),
        serde_json::json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    let traced: uuid::Uuid = pg
        .query_one(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ('order', 'o-1', 'created', '{\"total\": 10}', $1) RETURNING id",
            &[&serde_json::Value::Object(headers)],
        )
        .await
        .unwrap()
        .get(0);
    for i in 0..24 {
        db.insert(&pg, &format!("o-{}", i % 6), &format!("e{i}"))
            .await;
    }

    // THEN all arrive with the contract, the traceparent among the 10 attributes, the real
    // event ID not overwritten by the header
    let messages = sqs::receive_n(&client, &queue, 25).await;
    let m = messages
        .iter()
        .find(|m| sqs::attr(m, "event_id") == Some(traced.to_string()))
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"total": 10}));
    assert_eq!(sqs::attr(m, "event_type").as_deref(), Some("created"));
    assert_eq!(sqs::attr(m, "aggregate_type").as_deref(), Some("order"));
    assert_eq!(sqs::attr(m, "aggregate_id").as_deref(), Some("o-1"));
    assert_eq!(
        sqs::attr(m, "traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    // Five slots for the row's headers: traceparent, h00..h03
    assert_eq!(m.message_attributes().unwrap().len(), 10);
    assert!(sqs::attr(m, "h03").is_some() && sqs::attr(m, "h04").is_none());
    // AND every message carries its row's seq as the Number attribute `seq`
    let seqs = db.seqs(&pg).await;
    for m in &messages {
        let id = sqs::attr(m, "event_id").unwrap();
        let seq = &m.message_attributes().unwrap()["seq"];
        assert_eq!(seq.data_type(), "Number", "seq of {id}");
        assert_eq!(seq.string_value(), Some(seqs[&id].to_string().as_str()));
    }
    eventually("all dispatched", || async {
        db.count(&pg, "dispatched").await == 25
    })
    .await;
    assert!(
        relay
            .metrics
            .render()
            .contains("outbox_events_published_total{destination=\"outbox-test-")
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queue_uses_group_and_dedupe_ids_and_keeps_group_order() {
    // GIVEN a FIFO queue
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let queue = sqs::create_queue(&client, true).await;
    let mut config = sqs::sqs_config(&db, &queue);
    config.relay.batch_size = 13;
    let relay = start_relay_with(&config, sqs::publisher(&config));
    let pg = db.client().await;

    // WHEN 5 aggregates get 20 interleaved, numbered events each
    let mut ids = HashMap::new();
    for i in 0..100 {
        let aggregate = format!("g-{}", i % 5);
        let n = i / 5 + 1;
        let id = insert_event(
            &pg,
            "order",
            &aggregate,
            "step",
            serde_json::json!({ "n": n }),
        )
        .await;
        ids.insert(id.to_string(), aggregate);
    }

    // THEN group id = aggregate id, dedupe id = event id, and each group arrives in order
    let messages = sqs::receive_n(&client, &queue, 100).await;
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &messages {
        let event_id = sqs::attr(m, "event_id").unwrap();
        let group = sqs::system_attr(m, MessageSystemAttributeName::MessageGroupId).unwrap();
        let dedupe =
            sqs::system_attr(m, MessageSystemAttributeName::MessageDeduplicationId).unwrap();
        assert_eq!(ids[&event_id], group);
        assert_eq!(dedupe, event_id);
        let n = serde_json::from_str::<serde_json::Value>(m.body().unwrap()).unwrap()["n"]
            .as_i64()
            .unwrap();
        let prev = last.insert(group.clone(), n).unwrap_or(0);
        assert_eq!(n, prev + 1, "group {group}: {n} after {prev}");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_event_goes_dead_at_once_and_others_flow() {
    // GIVEN a 2 KB message limit
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let queue = sqs::create_queue(&client, false).await;
    let mut config = sqs::sqs_config(&db, &queue);
    config.broker.sqs.max_message_bytes = 2048;
    config.retry.max_attempts = 100;
    let relay = start_relay_with(&config, sqs::publisher(&config));
    let pg = db.client().await;

    // WHEN one event is too large and others are fine
    let big = insert_event(
        &pg,
        "order",
        "big",
        "created",
        serde_json::json!({ "blob": "x".repeat(4000) }),
    )
    .await;
    let mut small = Vec::new();
    for i in 0..5 {
        small.push(db.insert(&pg, &format!("s-{i}"), "created").await);
    }

    // THEN the small ones arrive, the big one is dead after a single attempt with the reason
    sqs::receive_n(&client, &queue, 5).await;
    eventually("big event dead", || async {
        db.count(&pg, "dead").await == 1
    })
    .await;
    let row = pg
        .query_one(
            "SELECT attempts, last_error FROM outbox_events WHERE id = $1",
            &[&big],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    let reason: String = row.get(1);
    assert!(
        reason.contains("too large") && reason.contains("over"),
        "{reason}"
    );
    assert!(
        relay
            .metrics
            .render()
            .contains("outbox_publish_failures_total{reason=\"too_large\"} 1")
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_maximum_message_size_lowers_the_limit() {
    // GIVEN a queue that takes at most 1 KiB, and the default (1 MiB) relay limit
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let queue = sqs::create_limited_queue(&client, 1024).await;
    let config = sqs::sqs_config(&db, &queue);
    let relay = start_relay_with(&config, sqs::publisher(&config));
    let pg = db.client().await;

    // WHEN a 2 KB event is written among small ones
    let big = insert_event(
        &pg,
        "order",
        "big",
        "created",
        serde_json::json!({ "blob": "x".repeat(2000) }),
    )
    .await;
    for i in 0..5 {
        db.insert(&pg, &format!("s-{i}"), "created").await;
    }

    // THEN it is dead as too large for the queue's limit (read at connect), the rest flows
    sqs::receive_n(&client, &queue, 5).await;
    eventually("big event dead", || async {
        db.count(&pg, "dead").await == 1
    })
    .await;
    let reason: String = pg
        .query_one(
            "SELECT last_error FROM outbox_events WHERE id = $1",
            &[&big],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("limit 1024 bytes"), "{reason}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_the_emulator_refuses_whole_is_split_and_only_the_offender_blamed() {
    // GIVEN a connected relay, and then the queue's limit lowered behind its back
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let queue = sqs::create_queue(&client, false).await;
    let config = sqs::sqs_config(&db, &queue);
    let relay = start_relay_with(&config, sqs::publisher(&config));
    eventually("connected", || async { relay.health.ready() }).await;
    sqs::set_max_message_size(&client, &queue, 1024).await;
    let pg = db.client().await;

    // WHEN one 2 KB event and five small ones commit together (one SendMessageBatch call,
    // which moto refuses as a whole with InvalidParameterValue)
    pg.execute(
        "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
         SELECT 'order', 'a-' || i, 'created', \
                CASE WHEN i = 0 THEN jsonb_build_object('blob', repeat('x', 2000)) \
                     ELSE jsonb_build_object('n', i) END \
         FROM generate_series(0, 5) AS i",
        &[],
    )
    .await
    .unwrap();

    // THEN the entries are sent again one by one: the big one is dead with SQS's reason
    // after one attempt, the others are delivered
    sqs::receive_n(&client, &queue, 5).await;
    eventually("settled", || async {
        db.count(&pg, "dead").await == 1 && db.count(&pg, "dispatched").await == 5
    })
    .await;
    let row = pg
        .query_one(
            "SELECT aggregate_id, attempts, last_error FROM outbox_events WHERE status = 'dead'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "a-0");
    assert_eq!(row.get::<_, i32>(1), 1);
    let reason: String = row.get(2);
    assert!(
        reason.contains("InvalidParameterValue") && reason.contains("shorter than 1024"),
        "{reason}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_entry_failures_in_one_batch_are_settled_one_by_one() {
    // GIVEN a batch where SQS fails one entry as the sender's fault and one as its own
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let queue = sqs::create_queue(&client, false).await;
    let mut config = sqs::sqs_config(&db, &queue);
    config.retry.max_attempts = 1000;
    let pg = db.client().await;
    let rejected = db.insert(&pg, "r", "created").await;
    let transient = db.insert(&pg, "t", "created").await;
    let mut fine = Vec::new();
    for i in 0..6 {
        fine.push(db.insert(&pg, &format!("f-{i}"), "created").await);
    }
    let (publisher, fault) = Faulty::new(sqs::publisher(&config));
    *fault.lock().unwrap() = Fault::Fail(HashMap::from([
        (
            rejected,
            PublishError::Rejected("InvalidParameterValue: bad attribute".into()),
        ),
        (
            transient,
            PublishError::Transient("InternalError: try again".into()),
        ),
    ]));
    let relay = start_relay_with(&config, publisher);

    // THEN the fine ones are dispatched, the rejected one is dead at once with SQS's reason,
    // the transient one is retried with attempts
    sqs::receive_n(&client, &queue, 6).await;
    eventually("outcomes settled", || async {
        let rows = pg
            .query(
                "SELECT id, status, attempts, last_error FROM outbox_events WHERE id = ANY($1)",
                &[&vec![rejected, transient]],
            )
            .await
            .unwrap();
        rows.iter().all(|r| {
            let id: uuid::Uuid = r.get(0);
            let status: String = r.get(1);
            let attempts: i32 = r.get(2);
            let error: Option<String> = r.get(3);
            if id == rejected {
                status == "dead"
                    && attempts == 1
                    && error.is_some_and(|e| e.contains("bad attribute"))
            } else {
                status == "pending"
                    && attempts >= 2
                    && error.is_some_and(|e| e.contains("InternalError"))
            }
        })
    })
    .await;
    assert_eq!(db.count(&pg, "dispatched").await, 6);

    // WHEN SQS accepts again THEN the transient one is delivered
    *fault.lock().unwrap() = Fault::None;
    let m = sqs::receive_n(&client, &queue, 1).await;
    assert_eq!(sqs::attr(&m[0], "event_id"), Some(transient.to_string()));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_sqs_pauses_without_attempts_and_resumes() {
    // GIVEN a relay reaching the emulator through a proxy that is down
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let queue = sqs::create_queue(&client, false).await;
    let proxy = Proxy::start("127.0.0.1:4566".parse().unwrap()).await;
    proxy.cut();
    let mut config = sqs::sqs_config(&db, &queue);
    config.retry.max_attempts = 1;
    config.relay.publish_timeout = Duration::from_secs(2);
    let relay = start_relay_with(
        &config,
        sqs::publisher_at(&config, &format!("http://{}", proxy.addr)),
    );
    let pg = db.client().await;
    for i in 0..5 {
        db.insert(&pg, &format!("u-{i}"), "created").await;
    }

    // THEN it stays unready, counts no attempt, kills nothing
    eventually("reconnect attempts", || async {
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    assert!(!relay.health.ready());
    assert!(relay.metrics.render().contains("outbox_broker_up 0"));
    let max_attempts: i32 = pg
        .query_one("SELECT coalesce(max(attempts), 0) FROM outbox_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max_attempts, 0);

    // WHEN SQS is reachable THEN everything is delivered
    proxy.restore();
    sqs::receive_n(&client, &queue, 5).await;
    eventually("all dispatched", || async {
        db.count(&pg, "dispatched").await == 5
    })
    .await;
    assert!(relay.health.ready());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_aggregate_types_to_their_own_queues() {
    // GIVEN invoices routed to their own FIFO queue, everything else to the default queue
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let default = sqs::create_queue(&client, false).await;
    let invoices = sqs::create_queue(&client, true).await;
    let mut config = sqs::sqs_config(&db, &default);
    config
        .broker
        .sqs
        .routes
        .insert("invoice".into(), invoices.clone());
    let relay = start_relay_with(&config, sqs::publisher(&config));
    let pg = db.client().await;

    // WHEN both kinds are written
    let order = insert_event(&pg, "order", "o-1", "created", serde_json::json!({})).await;
    let invoice = insert_event(&pg, "invoice", "i-1", "issued", serde_json::json!({})).await;

    // THEN each lands in its queue (the invoice with FIFO ids)
    let got = sqs::receive_n(&client, &default, 1).await;
    assert_eq!(sqs::attr(&got[0], "event_id"), Some(order.to_string()));
    let got = sqs::receive_n(&client, &invoices, 1).await;
    assert_eq!(sqs::attr(&got[0], "event_id"), Some(invoice.to_string()));
    assert_eq!(
        sqs::system_attr(&got[0], MessageSystemAttributeName::MessageGroupId).as_deref(),
        Some("i-1")
    );
    relay.stop().await;
}

/// Whole SendMessageBatch calls fail with `fault` (the queue probe still succeeds): the relay
/// pauses, counts no attempt, kills nothing, and delivers everything once SQS accepts again.
async fn whole_call_failure_pauses_without_attempts(fault: sqs::SqsFault) {
    // GIVEN a relay talking to SQS through a proxy that fails every SendMessageBatch
    let db = TestDb::migrated().await;
    let client = sqs::client();
    let queue = sqs::create_queue(&client, true).await;
    let proxy = sqs::SqsProxy::start().await;
    proxy.set(fault);
    let mut config = sqs::sqs_config(&db, &queue);
    config.retry.max_attempts = 1;
    let relay = start_relay_with(&config, sqs::publisher_at(&config, &proxy.endpoint));
    let pg = db.client().await;

    // WHEN events are written
    for i in 0..12 {
        db.insert(&pg, &format!("p-{}", i % 4), &format!("e{i}"))
            .await;
    }

    // THEN publishing is retried as a paused broker: no attempt counted, nothing dead
    eventually("two failed rounds of the first wave (4 events)", || async {
        let rendered = relay.metrics.render();
        value(
            &rendered,
            "outbox_publish_failures_total{reason=\"broker_down\"}",
        ) >= 8.0
    })
    .await;
    assert!(proxy.injected.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    eventually("not ready", || async { !relay.health.ready() }).await;
    assert_eq!(attempts_and_dead(&pg).await, (0, 0));

    // WHEN SQS accepts again THEN everything is delivered, in order per group
    proxy.set(sqs::SqsFault::None);
    let messages = sqs::receive_n(&client, &queue, 12).await;
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &messages {
        let group = sqs::system_attr(m, MessageSystemAttributeName::MessageGroupId).unwrap();
        let seq: i64 = sqs::attr(m, "event_type").unwrap()[1..].parse().unwrap();
        let prev = last.insert(group.clone(), seq).unwrap_or(-1);
        assert!(seq > prev, "group {group}: e{seq} after e{prev}");
    }
    eventually("all dispatched", || async {
        db.count(&pg, "dispatched").await == 12
    })
    .await;
    eventually("ready", || async { relay.health.ready() }).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_sqs_pauses_without_attempts() {
    whole_call_failure_pauses_without_attempts(sqs::SqsFault::Fail {
        status: 403,
        code: "RequestThrottled",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_server_errors_pause_without_attempts() {
    whole_call_failure_pauses_without_attempts(sqs::SqsFault::Fail {
        status: 500,
        code: "InternalError",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_on_send_pauses_without_attempts() {
    whole_call_failure_pauses_without_attempts(sqs::SqsFault::Fail {
        status: 400,
        code: "AccessDenied",
    })
    .await;
}
