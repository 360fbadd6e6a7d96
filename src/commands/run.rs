//! `outbox-relay run`: builds the configured broker and relay, serves metrics, and runs until
//! SIGTERM/SIGINT.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::{CommandError, database_error};
use crate::{
    broker::{Broker, rabbitmq::RabbitMqPublisher, sqs::SqsPublisher},
    config::{BrokerKind, Config},
    ops::server,
    relay::Relay,
};

/// Runs the relay daemon.
pub async fn run(config: Config) -> Result<ExitCode, CommandError> {
    for note in config.relay.deprecations() {
        tracing::warn!("{note}");
    }
    let broker = match config.broker.kind {
        BrokerKind::Rabbitmq => Broker::RabbitMq(
            RabbitMqPublisher::new(&config.broker.rabbitmq, config.relay.publish_timeout)
                .map_err(|e| CommandError::usage(format!("config key `broker.rabbitmq`: {e}")))?
                .with_channels(config.relay.channels()),
        ),
        BrokerKind::Sqs => Broker::Sqs(
            SqsPublisher::new(&config.broker.sqs, config.relay.publish_timeout)
                .await
                .map_err(|e| CommandError::usage(format!("config key `broker.sqs`: {e}")))?,
        ),
    };
    let relay = Relay::new(&config, broker).map_err(|e| CommandError::usage(e.to_string()))?;
    // Fail fast on a missing schema (the most common first-run mistake); an unreachable
    // database is not fatal: the pipeline reconnects with backoff and /readyz says 503.
    match relay.store().check_schema().await {
        Ok(()) => {}
        // Reported (and logged once) by the health state; the relay keeps retrying.
        Err(e) if e.is_connection() => relay.health().set_database_up(false, &e.to_string()),
        Err(e) => return Err(database_error(&e, &config.database.table)),
    }

    let shutdown = CancellationToken::new();
    let (addr, server) = server::serve(
        config.metrics.listen,
        relay.health(),
        relay.metrics(),
        relay.snapshot(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| {
        CommandError::failure(format!(
            "cannot listen on {} (metrics.listen): {e}",
            config.metrics.listen
        ))
    })?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");

    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        // Cancel first: nothing (not even a log line) may stand between a signal and the drain.
        signals.cancel();
        tracing::info!("shutdown requested; draining");
    });

    relay
        .run(shutdown.clone())
        .await
        .map_err(|e| CommandError::failure(e.to_string()))?;
    shutdown.cancel();
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
