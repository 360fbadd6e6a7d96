//! The raw limits the relay is measured against: the broker alone (lapin, the relay's message
//! properties, confirms outstanding or timed), the store alone (the relay's read and mark),
//! and broker and store together without a relay; and the order bound derived from the
//! confirm round trip.

use std::{collections::VecDeque, time::Instant};

use lapin::{BasicProperties, options::BasicPublishOptions};
use outbox_relay::broker::rabbitmq::message_properties;
use uuid::Uuid;

use crate::fixtures::{
    Backlog, broker_cleanup, confirm_channel, drop_db, prefilled_store, sample_event,
};

/// Confirms outstanding in the raw broker limit (part 1).
pub const RAW_WINDOW: usize = 1000;

/// One raw publishing run: its rate and, when timed, each message's confirm round trip.
#[derive(Clone, Copy, Debug)]
pub struct BrokerRun {
    pub rate: f64,
    /// Publish call to confirm, median and 99th percentile, in milliseconds (NaN untimed).
    pub rtt_p50_ms: f64,
    pub rtt_p99_ms: f64,
}

impl BrokerRun {
    pub const SKIPPED: BrokerRun = BrokerRun {
        rate: f64::NAN,
        rtt_p50_ms: f64::NAN,
        rtt_p99_ms: f64::NAN,
    };
}

/// Which message properties a raw publishing run sends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Exactly what the relay sends for a backlog event (`message_id`, `content_type`, `type`,
    /// `timestamp`, the three `x-` headers): the limit the relay is measured against, since
    /// the broker's cost per message grows with its properties.
    Relay,
    /// Only `delivery_mode` and `message_id`: the broker's best case, printed beside.
    Minimal,
}

impl Shape {
    fn properties(self, i: usize) -> BasicProperties {
        match self {
            Shape::Minimal => BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(i.to_string().into()),
            Shape::Relay => message_properties(&sample_event(i, RAW_WINDOW, String::new())),
        }
    }
}

/// How a raw publishing run treats its confirms.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Confirms {
    /// Awaited in order by the publishing loop: the raw limit (part 1).
    Plain,
    /// Each awaited by a task of its own that notes when it arrived, so the round trip
    /// (publish call to confirm) is exact however far behind the loop is; the loop's window
    /// is the same. The tasks cost the broker some CPU on 2 cores (7-20 % of the rate in an
    /// A/B run with 1,000 outstanding), hence apart from the raw limit.
    Timed,
}

/// Part 1, the raw broker limit: lapin, persistent messages, `window` outstanding confirms
/// (the oldest is awaited once `window` are out); with [`Confirms::Timed`], the confirm
/// round trip at that window instead.
pub async fn raw_broker(
    n: usize,
    payload: usize,
    window: usize,
    confirms: Confirms,
    shape: Shape,
) -> BrokerRun {
    let (conn, exchange, queue, ch) = confirm_channel().await;
    let body = vec![b'x'; payload];
    let mut rtts = Vec::with_capacity(if confirms == Confirms::Timed { n } else { 0 });
    let mut plain = VecDeque::new();
    let mut timed = VecDeque::new();
    let started = Instant::now();
    for i in 0..n {
        let sent = Instant::now();
        let confirm = publish(&ch, &exchange, &body, shape.properties(i)).await;
        match confirms {
            Confirms::Plain => {
                plain.push_back(confirm);
                if plain.len() >= window {
                    assert!(plain.pop_front().unwrap().await.unwrap().is_ack());
                }
            }
            Confirms::Timed => {
                timed.push_back(tokio::spawn(async move {
                    let ack = confirm.await.unwrap().is_ack();
                    (ack, sent.elapsed())
                }));
                if timed.len() >= window {
                    let (ack, rtt) = timed.pop_front().unwrap().await.unwrap();
                    assert!(ack);
                    rtts.push(rtt);
                }
            }
        }
    }
    for c in plain {
        assert!(c.await.unwrap().is_ack());
    }
    for c in timed {
        let (ack, rtt) = c.await.unwrap();
        assert!(ack);
        rtts.push(rtt);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    broker_cleanup(&conn, &exchange, &queue).await;
    rtts.sort_unstable();
    let ms = |p: f64| {
        rtts.get(((rtts.len().max(1) - 1) as f64 * p) as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    BrokerRun {
        rate,
        rtt_p50_ms: ms(0.5),
        rtt_p99_ms: ms(0.99),
    }
}

/// The raw broker limit at [`RAW_WINDOW`] confirms outstanding: with the relay's message
/// properties, then with minimal ones (`n` messages each).
pub async fn raw_broker_limits(n: usize, payload: usize) -> (BrokerRun, BrokerRun) {
    let relay = raw_broker(n, payload, RAW_WINDOW, Confirms::Plain, Shape::Relay).await;
    let minimal = raw_broker(n, payload, RAW_WINDOW, Confirms::Plain, Shape::Minimal).await;
    (relay, minimal)
}

/// The confirm round trip with `window` confirms outstanding, the relay's message properties.
pub async fn round_trip(window: usize, payload: usize) -> BrokerRun {
    let n = rtt_messages(window);
    raw_broker(n, payload, window, Confirms::Timed, Shape::Relay).await
}

/// Messages for a round-trip measurement with `window` confirms outstanding: enough for a
/// steady state, about a second or two here.
fn rtt_messages(window: usize) -> usize {
    (window * 200).clamp(2_000, 20_000)
}

/// The order bound for `aggregates` aggregates: each aggregate has at most one event in
/// flight, so at most `aggregates` confirms are outstanding and at most `aggregates` per
/// round trip can be confirmed (Little's law), the round trip measured with that many
/// confirms outstanding. None when the aggregates do not bind (at least the raw window).
pub fn order_bound(aggregates: usize, rtt: &BrokerRun) -> Option<f64> {
    (aggregates < RAW_WINDOW && rtt.rtt_p50_ms.is_finite())
        .then(|| aggregates as f64 / (rtt.rtt_p50_ms / 1000.0))
}

/// One mandatory, persistent-by-properties publish to `exchange` with the routing key every
/// benchmark message uses; returns its confirm.
async fn publish(
    ch: &lapin::Channel,
    exchange: &str,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::PublisherConfirm {
    ch.basic_publish(
        exchange.into(),
        "order.created".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        body,
        properties,
    )
    .await
    .unwrap()
}

/// 2. Raw store limit: the relay's claim + mark SQL, no broker.
pub async fn raw_store(b: Backlog, batch: usize) -> f64 {
    let n = b.events;
    let (name, store) = prefilled_store(b).await;
    let all: Vec<i32> = (0..64).collect();
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let events = store
            .read_pending(0, batch, Some((&all, 64)))
            .await
            .unwrap();
        if events.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = events.iter().map(|r| r.event.id).collect();
        done += store.mark_dispatched(&ids).await.unwrap() as usize;
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    drop_db(&name).await;
    rate
}

/// The raw limit of broker and store together on this machine: no relay, one loop that reads
/// the backlog in `seq` order (the relay's read), publishes each row with the relay's
/// properties on one channel with [`RAW_WINDOW`] confirms outstanding, and marks confirmed
/// rows dispatched in batches (the relay's mark) on a task of its own. No ordering, no
/// scheduling: what the relay's work costs the two servers sharing the machine's cores.
pub async fn raw_combined(b: Backlog, batch: usize) -> f64 {
    let n = b.events;
    let (name, store) = prefilled_store(b).await;
    let (conn, exchange, queue, ch) = confirm_channel().await;
    let (marks, mut to_mark) = tokio::sync::mpsc::channel::<Vec<Uuid>>(4);
    let marker = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut marked = 0;
            while let Some(ids) = to_mark.recv().await {
                marked += store.mark_dispatched(&ids).await.unwrap() as usize;
            }
            marked
        })
    };
    let all: Vec<i32> = (0..64).collect();
    let started = Instant::now();
    let mut cursor = 0;
    let mut outstanding = VecDeque::new();
    let mut confirmed = Vec::with_capacity(batch);
    loop {
        let rows = store
            .read_pending(cursor, batch, Some((&all, 64)))
            .await
            .unwrap();
        let Some(last) = rows.last() else { break };
        cursor = last.event.seq;
        for row in rows {
            let event = row.event;
            let properties = message_properties(&event);
            let confirm = publish(&ch, &exchange, event.payload.as_bytes(), properties).await;
            outstanding.push_back((event.id, confirm));
            while outstanding.len() >= RAW_WINDOW {
                let (id, confirm) = outstanding.pop_front().unwrap();
                assert!(confirm.await.unwrap().is_ack());
                confirmed.push(id);
                if confirmed.len() >= batch {
                    marks.send(std::mem::take(&mut confirmed)).await.unwrap();
                }
            }
        }
    }
    for (id, confirm) in outstanding {
        assert!(confirm.await.unwrap().is_ack());
        confirmed.push(id);
    }
    marks.send(confirmed).await.unwrap();
    drop(marks);
    let marked = marker.await.unwrap();
    let rate = marked as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        marked, n,
        "the combined raw run marked fewer rows than it was given"
    );
    broker_cleanup(&conn, &exchange, &queue).await;
    drop_db(&name).await;
    rate
}
