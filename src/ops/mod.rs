//! What operators see: Prometheus metrics, the gauge refresher, the health/readiness state,
//! the status snapshot and page, and the HTTP server. (The `status` and `dead list` commands
//! render their text beside themselves, in `commands/`.)

pub mod gauges;
pub mod health;
pub mod metrics;
pub mod page;
pub mod server;
pub mod snapshot;
