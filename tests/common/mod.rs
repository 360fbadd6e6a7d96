//! Test harness shared by the integration tests, one file per purpose. Every test binary
//! compiles all of it (`mod common;`) and uses a part, hence `allow(dead_code)`.
//!
//! What nearly every test uses is re-exported here, so `use common::*` brings it:
//! - `db`: the tests' Postgres (`OUTBOX_TEST_PG`), a fresh migrated database per test, and
//!   the table's state;
//! - `rabbitmq`: the tests' RabbitMQ (`OUTBOX_TEST_AMQP`), a fresh exchange and queue per
//!   test, consuming;
//! - `relay`: a relay running in-process with an injected shutdown token;
//! - here: [`PATIENCE`] and [`eventually`], which awaits a condition instead of sleeping.
//!
//! The rest is imported by module where a test needs it: `process` (the one way to launch the
//! `outbox-relay` binary), `http` (the ops port), `metrics` (the one reader of a metrics
//! rendering), `proxy` and `listeners` (network faults), `publisher` (a fault-injecting
//! publisher), `producers`, `delivery` (order and duplicate checks), `servers` (servers a test
//! owns), `sqs` (the SQS emulator) and `prometheus` (a real Prometheus).
#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used)]

pub mod db;
pub mod delivery;
pub mod http;
pub mod listeners;
pub mod metrics;
pub mod process;
pub mod producers;
pub mod prometheus;
pub mod proxy;
pub mod publisher;
pub mod rabbitmq;
pub mod relay;
pub mod servers;
pub mod sqs;

use std::{
    future::Future,
    time::{Duration, Instant},
};

// Not every test binary uses all three.
#[allow(unused_imports)]
pub use {db::*, rabbitmq::*, relay::*};
// benches/inbox_consumer.rs (which includes this harness) finds the example consumer here.
#[allow(unused_imports)]
pub use process::example_binary;

/// Upper bound for any awaited condition: generous, only hit when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "outbox_relay=info,lapin=error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Awaits `condition` (polled every 20 ms, up to [`PATIENCE`]).
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, PATIENCE, condition).await;
}

/// Awaits `condition` (polled every 20 ms) up to `patience`: for the few tests whose
/// condition involves a production deadline longer than [`PATIENCE`] allows.
pub async fn eventually_within<F, Fut>(what: &str, patience: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
