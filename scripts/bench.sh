#!/usr/bin/env bash
# The benchmark: brings up Postgres and RabbitMQ as needed, then measures in one run the raw
# broker limit, the raw store limit, the relay's drain (and its ratio to the limits), notify
# wake-up latency, the producers' commit-rate tax and the relay's peak RSS.
# Flags go to the benchmark, e.g. scripts/bench.sh --events 100000 --aggregates 1000 --replicas 2
# (`scripts/bench.sh --help` lists them); --matrix runs the drain over backlogs and aggregate
# counts instead; --sqs adds the SQS variant against the emulator (started here only then).
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
  *" --sqs "*) bash scripts/services.sh ;;
  *) bash scripts/services.sh --no-sqs ;;
esac
exec cargo bench --locked --bench relay -- "$@"
