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
//! - [`event`]: the event types store and broker share ([`event::OutboxEvent`],
//!   [`event::NewEvent`]).
//! - [`backoff`]: capped exponential backoff with jitter, for retries and reconnect loops.
//! - [`tls`]: TLS failures in an operator's words (unknown issuer, host name mismatch, ...),
//!   for Postgres and RabbitMQ alike.
//! - [`config`]: figment layering (defaults, TOML file, `OUTBOX_RELAY_*` env) into typed
//!   values (table names, the database URL, the routing template parsed once), validation
//!   naming the offending key, secret redaction. One file per section.
//! - [`store`]: all SQL: connecting (TLS) through one backing-off connection gate, migrations,
//!   the ordered read, settle, the wake-up protocol, status queries, dead-letter listing and
//!   replay, retention purges, the advisory locks of replica coordination.
//! - [`broker`]: the [`broker::Publisher`] contract, RabbitMQ and SQS (one folder each).
//! - [`telemetry`]: tracing subscriber set-up (text or JSON) and the CLI's output streams.
//! - [`ops`]: metrics, the gauge refresher, health state, the status snapshot and page, the
//!   HTTP server for `/metrics`, `/healthz`, `/readyz` and `/`.
//! - [`inbox`]: the consumers' side: the inbox table that makes processing effectively-once
//!   (record message IDs in the consumer's transaction, skip duplicates), and its purge.
//! - [`relay`]: the pipeline: wake-ups, per-aggregate ordering in memory, the confirm window,
//!   retry policy, circuit breaker, replica coordination (bucket ownership), shutdown drain.
//! - [`commands`]: one file per subcommand, with the rendering of what it prints; errors
//!   mapped to exit codes.
//! - [`cli`]: the command line (clap definitions).
//!
//! Imports run one way, down this table: a module imports only the modules its row names
//! (`tests/architecture.rs` reads this table and checks every `crate::` path in `src/`
//! against it). Something a module needs from a row above it lives in the wrong place: move
//! it down, don't add the arrow.
//!
//! ```text
//! commands            -> cli, relay, inbox, ops, telemetry, broker, store, config, tls, backoff, event
//! relay               -> ops, broker, store, config, tls, backoff, event
//! inbox, ops          -> store, config, tls, backoff, event
//! store, broker       -> config, tls, backoff, event   (store and broker never import each other)
//! telemetry           -> config
//! config              -> event
//! cli, event, backoff, tls -> (nothing)
//! ```

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
