//! A publisher wrapper that injects what a real broker cannot produce on demand: nacks,
//! per-event errors, a hang, a delay, outcomes held back after the broker confirmed.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use outbox_relay::{
    broker::{Outcome, PublishError, Publisher},
    event::OutboxEvent,
};
use uuid::Uuid;

/// What [`Faulty`] does to publishes.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Pass through.
    None,
    /// Nack these events (without sending them).
    Nack(HashSet<Uuid>),
    /// Fail these events with the given error (without sending them); send the rest.
    Fail(HashMap<Uuid, PublishError>),
    /// Wait this long, then report a confirm timeout for the whole call (a hung broker).
    Hang(Duration),
    /// Publish for real, then hold the outcomes until the gate is notified.
    HoldAfterConfirm(Arc<tokio::sync::Notify>),
    /// Wait this long, then publish for real (a slow broker: keeps batches in flight).
    Delay(Duration),
}

/// A publisher wrapper that injects faults the real broker cannot produce on demand.
pub struct Faulty<P> {
    inner: P,
    pub fault: Arc<Mutex<Fault>>,
    pub calls: Arc<AtomicUsize>,
}

impl<P> Faulty<P> {
    pub fn new(inner: P) -> (Self, Arc<Mutex<Fault>>) {
        let fault = Arc::new(Mutex::new(Fault::None));
        (
            Self {
                inner,
                fault: fault.clone(),
                calls: Arc::new(AtomicUsize::new(0)),
            },
            fault,
        )
    }
}

impl<P: Publisher> Publisher for Faulty<P> {
    async fn connect(&self) -> Result<(), PublishError> {
        self.inner.connect().await
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = self.fault.lock().unwrap().clone();
        match fault {
            Fault::None => self.inner.publish(events).await,
            Fault::HoldAfterConfirm(gate) => {
                let outcomes = self.inner.publish(events).await;
                gate.notified().await;
                outcomes
            }
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                self.inner.publish(events).await
            }
            Fault::Hang(d) => {
                tokio::time::sleep(d).await;
                vec![Err(PublishError::Timeout); events.len()]
            }
            Fault::Fail(errors) => {
                let pass: Vec<OutboxEvent> = events
                    .iter()
                    .filter(|e| !errors.contains_key(&e.id))
                    .cloned()
                    .collect();
                let mut passed = self.inner.publish(&pass).await.into_iter();
                events
                    .iter()
                    .map(|e| match errors.get(&e.id) {
                        Some(error) => Err(error.clone()),
                        None => passed.next().unwrap(),
                    })
                    .collect()
            }
            Fault::Nack(ids) => {
                let pass: Vec<OutboxEvent> = events
                    .iter()
                    .filter(|e| !ids.contains(&e.id))
                    .cloned()
                    .collect();
                let mut passed = self.inner.publish(&pass).await.into_iter();
                events
                    .iter()
                    .map(|e| {
                        if ids.contains(&e.id) {
                            Err(PublishError::Nacked)
                        } else {
                            passed.next().unwrap()
                        }
                    })
                    .collect()
            }
        }
    }

    fn destination(&self, event: &OutboxEvent) -> String {
        self.inner.destination(event)
    }

    fn lost(&self) -> bool {
        self.inner.lost()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
