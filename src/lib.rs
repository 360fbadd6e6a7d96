//! outbox-relay: a transactional outbox relay. Applications insert rows into `outbox_events`
//! in their own transactions; the relay publishes each committed event to RabbitMQ or SQS
//! (at-least-once, event ID as the dedupe key, per-aggregate order) and marks it dispatched
//! only after the broker confirmed it.
//!
//! Data flows one way:
//!
//! ```text
//! wake-up (NOTIFY or timer) -> read (store) -> order (memory) -> publish (broker) -> settle (store)
//!                                                   ^                                      |
//!                                                   +-------- retry / dead decisions ------+
//! ```
//!
//! Modules:
//! - [`backoff`]: capped exponential backoff with jitter, for retries and reconnect loops.
//! - [`cli`]: the command line (clap definitions).
//! - [`commands`]: one function per subcommand, errors mapped to exit codes.
//! - [`config`]: figment layering (defaults, TOML file, `OUTBOX_RELAY_*` env), validation
//!   naming the offending key, secret redaction.
//! - [`store`]: all SQL: connecting (TLS) through one backing-off connection gate, migrations,
//!   the ordered read, settle, the wake-up protocol,
//!   status queries, dead-letter listing and replay, retention purges.
//! - [`broker`]: the [`broker::Publisher`] contract, routing templates, RabbitMQ and SQS.
//! - [`relay`]: the pipeline: wake-ups, per-aggregate ordering in memory, the confirm window,
//!   retry policy,
//!   circuit breaker, replica coordination (bucket ownership), shutdown drain.
//! - [`ops`]: metrics, the gauge refresher, health state, the HTTP server for `/metrics`,
//!   `/healthz`, `/readyz`, and the rendering of `status` / `dead list`.
//! - [`telemetry`]: tracing subscriber set-up (text or JSON).
//! - [`tls`]: TLS failures in an operator's words (unknown issuer, host name mismatch, ...),
//!   for Postgres and RabbitMQ alike.
//! - [`inbox`]: the consumers' side: the inbox table that makes processing effectively-once
//!   (record message IDs in the consumer's transaction, skip duplicates), and its purge.

pub mod backoff;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod event;
pub mod inbox;
pub mod ops;
pub mod relay;
pub mod store;
pub mod telemetry;
pub mod tls;
