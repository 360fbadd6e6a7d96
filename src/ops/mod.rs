//! What operators see: Prometheus metrics, the gauge refresher, the health/readiness state,
//! the status snapshot and page, the HTTP server, and the rendering of the `status` and
//! `dead list` commands.

pub mod gauges;
pub mod health;
pub mod metrics;
pub mod page;
pub mod render;
pub mod server;
pub mod snapshot;
