//! Tracing set-up: human-readable lines on a terminal, one JSON object per line with
//! `log.format = "json"` (the container default). `RUST_LOG` overrides `log.level`.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (call once, before the runtime starts).
pub fn init(config: &LogConfig) {
    // lapin logs every returned message with its full body at WARN; the relay logs the
    // failure itself (with the event ID), so keep lapin to errors unless asked otherwise.
    let directives = if config.level.contains("lapin") {
        config.level.clone()
    } else {
        format!("{},lapin=error", config.level)
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directives))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
