//! The `outbox-relay` binary: parse the CLI, load and validate config, init tracing, build
//! the runtime, dispatch. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use outbox_relay::{
    cli::Cli,
    commands::{self, EXIT_FAILURE, EXIT_USAGE},
    config::Config,
    telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            outbox_relay::telemetry::err(&format!("outbox-relay: {error}\n"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    telemetry::init(&config.log);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            outbox_relay::telemetry::err(&format!(
                "outbox-relay: cannot start the async runtime: {error}\n"
            ));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(commands::dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(error) => {
            outbox_relay::telemetry::err(&format!("outbox-relay: {}\n", error.message));
            ExitCode::from(error.code)
        }
    }
}
