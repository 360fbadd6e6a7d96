#!/usr/bin/env bash
# The test command: brings up Postgres, RabbitMQ and the SQS emulator (and installs
# Prometheus) as needed, unit-tests the alert rules with promtool, then runs the whole suite
# (unit + integration tests against the real services) with nextest.
# Extra arguments go to `cargo nextest run` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
promtool test rules config/prometheus-rules.test.yaml
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
exec cargo nextest run --locked --no-fail-fast "$@"
