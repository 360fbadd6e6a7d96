//! What operators see: Prometheus metrics, the gauge refresher, the health/readiness state,
//! its HTTP server, and the rendering of the `status` and `dead list` commands.

pub mod gauges;
pub mod health;
pub mod metrics;
pub mod render;
pub mod server;
