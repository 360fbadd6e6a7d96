#!/usr/bin/env bash
# The quick start: brings up Postgres and RabbitMQ as needed, migrates, runs the relay with
# config/local.toml, feeds it sample events and prints them as a consumer receives them.
# Ctrl-C stops everything. DEMO_EVENTS=N limits the number of sample events (default: endless).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh --no-sqs
cargo build --quiet --bin outbox-relay --example tail
export OUTBOX_RELAY_CONFIG=config/local.toml
BIN=target/debug/outbox-relay
$BIN migrate

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/debug/examples/tail & pids+=($!)
$BIN run & pids+=($!)

n=0
limit=${DEMO_EVENTS:-0}
echo "[demo] writing sample events; Ctrl-C to stop" >&2
while [ "$limit" = 0 ] || [ "$n" -lt "$limit" ]; do
  n=$((n + 1))
  order=$((n % 3 + 1))
  psql -q -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL
BEGIN;
INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
VALUES ('order', 'order-$order', 'order.updated', jsonb_build_object('order', $order, 'revision', $n));
COMMIT;
SQL
  sleep 1
done
sleep 2
