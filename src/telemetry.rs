//! Tracing set-up: human-readable lines on a terminal, one JSON object per line with
//! `log.format = "json"` (the container default). `RUST_LOG` overrides `log.level`.
//!
//! Logging never stops the relay: a line that cannot be written (the pipe's reader exited,
//! the disk is full) is dropped, and the subscriber does not report the failure with
//! `eprintln!`, which would panic on that same closed stderr. The same holds for what the
//! commands print ([`out`], [`err`]).

use std::io::Write;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (call once, before the runtime starts).
pub fn init(config: &LogConfig) {
    // lapin logs every returned message with its full body at WARN; the relay logs the
    // failure itself (with the event ID), so keep lapin to errors unless asked otherwise.
    // lapin logs every connection error itself, and rustls-platform-verifier (under lapin)
    // logs each rejected certificate at ERROR on every attempt: the relay reports both once
    // per state change, with the cause in words (see `tls`). A level that names them wins.
    let mut directives = config.level.clone();
    if !config.level.contains("lapin") {
        directives.push_str(",lapin=error");
    }
    if !config.level.contains("rustls_platform_verifier") {
        directives.push_str(",rustls_platform_verifier=off");
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directives))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(|| Lossy(std::io::stderr()))
        // Colours only on a terminal: a file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A writer that reports every write as done: a log line that cannot be written is lost,
/// never turned into an error or a panic.
struct Lossy<W>(W);

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Prints `text` to stdout; a closed pipe (`outbox-relay status | head -1`) is not an error.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Prints `text` to stderr, ignoring write errors.
pub fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
