#!/usr/bin/env bash
# The soak (benches/soak.rs): three replicas of the release binary under ~150 events/s for
# [minutes] (default 30), with a fault every minute in turn (SIGTERM, kill -9, relay database
# sessions terminated, broker connections closed, a frozen Postgres path, a poisoned aggregate,
# a frozen RabbitMQ path); then it prints written / delivered / duplicates / lost / order
# violations / dead, and the RSS, open files and database sessions of the replica that is never
# restarted. Exits non-zero if an event was lost or an aggregate's order broke. Not in CI.
# More flags go to the driver, e.g. scripts/soak.sh 10 --fault-interval 30s.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
shift || true
bash scripts/services.sh --no-sqs
# cargo bench builds the release binary the driver runs (env!("CARGO_BIN_EXE_outbox-relay"),
# compiled with the bench's feature set); a separate `cargo build --release` would only build it
# a second time.
exec cargo bench --locked --bench soak -- --minutes "$minutes" "$@"
