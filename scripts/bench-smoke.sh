#!/usr/bin/env bash
# CI's smoke run of the benchmark: small numbers, no thresholds, so the harness cannot rot
# (the SQS variant included, against the emulator; then the matrix at 2 % of its backlogs,
# its quiet-analyzed rows included; then the retained-history mode on 20,000 rows).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo bench --locked --bench relay -- --events 2000 --latency-seconds 1 --rate 200 \
  --producer-seconds 1 --sqs --sqs-events 200
cargo bench --locked --bench relay -- --matrix --matrix-scale 0.02 --drain-timeout 120
cargo bench --locked --bench relay -- --retained 20000 --idle-seconds 2 \
  --retained-drain-events 2000 --drain-timeout 120
# The consumer benchmark (inbox against no inbox), small.
bash scripts/bench-inbox.sh --messages 2000
