#!/usr/bin/env bash
# The quick start: brings up Postgres and RabbitMQ as needed, migrates a database of its own
# (`outbox_demo`, created if missing), runs the relay with config/local.toml, writes sample
# events and prints them as a consumer receives them, then stops by itself with a summary.
# DEMO_EVENTS=N sets the number of sample events (default 10; 0 = until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh --no-sqs
echo "[demo] building the relay and the demo consumer (about 3 minutes the first time)..." >&2
cargo build --bin outbox-relay --example tail
DB=outbox_demo
psql -q -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 ||
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $DB"
export OUTBOX_RELAY_CONFIG=config/local.toml
export OUTBOX_RELAY_DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB"
BIN=target/debug/outbox-relay
$BIN migrate

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/debug/examples/tail & pids+=($!)
$BIN run & pids+=($!)

sql() { psql -q -h 127.0.0.1 -U postgres -d "$DB" -v ON_ERROR_STOP=1 "$@"; }
limit=${DEMO_EVENTS:-10}
if [ "$limit" = 0 ]; then
  echo "[demo] writing a sample event every second; Ctrl-C to stop" >&2
else
  echo "[demo] writing $limit sample events, one a second" >&2
fi
start=$(sql -tAc "SELECT COALESCE(max(seq), 0) FROM outbox_events")
n=0
while [ "$limit" = 0 ] || [ "$n" -lt "$limit" ]; do
  n=$((n + 1))
  order=$((n % 3 + 1))
  sql <<SQL
BEGIN;
INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
VALUES ('order', 'order-$order', 'updated', jsonb_build_object('order', $order, 'revision', $n));
COMMIT;
SQL
  sleep 1
done
for _ in $(seq 1 20); do
  pending=$(sql -tAc "SELECT count(*) FROM outbox_events WHERE seq > $start AND status = 'pending'")
  [ "$pending" = 0 ] && break
  sleep 0.5
done
sleep 0.5
dispatched=$(sql -tAc "SELECT count(*) FROM outbox_events WHERE seq > $start AND status = 'dispatched'")
echo "[demo] done: $n events written, $dispatched published and marked dispatched (database $DB, exchange outbox)." >&2
echo "[demo] next: outbox-relay status (OUTBOX_RELAY_DATABASE__URL=$OUTBOX_RELAY_DATABASE__URL), docs/configuration.md." >&2
