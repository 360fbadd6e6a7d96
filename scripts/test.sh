#!/usr/bin/env bash
# The test command: brings up Postgres, RabbitMQ and the SQS emulator (and installs
# Prometheus, Chromium and openssl) as needed, unit-tests the alert rules with promtool, then
# runs the whole suite (unit + integration tests against the real services) with nextest.
# Extra arguments go to `cargo nextest run` (e.g. a test name filter). An SQS emulator this
# script started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
sqs_was_running=0
if listening 4566; then sqs_was_running=1; fi
bash scripts/services.sh
if [ "$sqs_was_running" = 0 ]; then
  trap 'pkill -f "moto_server -H 127.0.0.1 -p 4566" 2>/dev/null || true' EXIT
fi
promtool test rules config/prometheus-rules.test.yaml
NEXTEST_VERSION=0.9.143
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest --version "$NEXTEST_VERSION"
fi
# tests/inbox.rs runs the example consumer as a process: build it first (nextest does not).
cargo build --locked --example inbox_consumer
cargo nextest run --locked --no-fail-fast "$@"
