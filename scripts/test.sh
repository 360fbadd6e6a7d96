#!/usr/bin/env bash
# The test command: brings up Postgres, RabbitMQ and the SQS emulator as needed, then runs
# the whole suite (unit + integration tests against the real services) with nextest.
# Extra arguments go to `cargo nextest run` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# tests/inbox.rs runs the example consumer as a process: build it first (nextest does not).
cargo build --locked --example inbox_consumer
exec cargo nextest run --locked --no-fail-fast "$@"
