#!/usr/bin/env bash
# The consumer benchmark: the example consumer's rate with the inbox against the same consumer
# without it, on the same queue contents (benches/inbox_consumer.rs). Flags go to the
# benchmark, e.g. scripts/bench-inbox.sh --messages 50000 --aggregates 200 --batch-size 500.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh --no-sqs
cargo build --locked --release --example inbox_consumer
exec cargo bench --locked --bench inbox_consumer -- "$@"
