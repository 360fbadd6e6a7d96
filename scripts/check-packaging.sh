#!/usr/bin/env bash
# Static checks of the release artifacts (there is no Docker engine or cluster here):
#  - the Helm chart lints strictly and renders with every values file in tests/packaging/,
#    and the rendered manifests validate offline against the Kubernetes schemas;
#  - secrets never land in the ConfigMap; the pods are hardened;
#  - the Prometheus rules (config/ and the chart's PrometheusRule) pass promtool;
#  - the Grafana dashboard ships as a ConfigMap when grafanaDashboard.enabled=true;
#  - the Dockerfile passes hadolint and keeps its promises (pinned bases, --locked build,
#    exec-form ENTRYPOINT, non-root user, no baked-in config).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-packaging-tools.sh
export PATH="$PWD/.tools/bin:$PATH"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
failures=0
check() { if "$@"; then printf '  ok    %s\n' "$*" | cut -c1-140; else printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); fi; }

echo "== helm lint / template"
for values in tests/packaging/*.yaml; do
  name=$(basename "$values" .yaml)
  check helm lint --strict helm/outbox-relay -f "$values" --quiet
  helm template "relay-$name" helm/outbox-relay -f "$values" --namespace outbox > "$OUT/$name.yaml"
  # Core manifests against the bundled Kubernetes schemas (CRDs are checked below).
  check kubernetes-validate --strict --kubernetes-version 1.30.0 --quiet "$OUT/$name.yaml"
  # No secret values in ConfigMaps.
  check bash -c "! awk '/^kind: ConfigMap/,/^---/' '$OUT/$name.yaml' | grep -Eiq 'SuperSecretPassword|AnotherSecret|amqps?://|postgres://'"
  check grep -q 'readOnlyRootFilesystem: true' "$OUT/$name.yaml"
  check grep -q 'runAsNonRoot: true' "$OUT/$name.yaml"
  check grep -q 'type: RuntimeDefault' "$OUT/$name.yaml"
  check grep -q -- '- ALL' "$OUT/$name.yaml"
  check grep -q 'checksum/config:' "$OUT/$name.yaml"
  check grep -q 'path: /healthz' "$OUT/$name.yaml"
  check grep -q 'path: /readyz' "$OUT/$name.yaml"
done
check grep -q 'eks.amazonaws.com/role-arn' "$OUT/sqs-irsa.yaml"
check grep -q 'helm.sh/hook: pre-install,pre-upgrade' "$OUT/migration-job.yaml"
# The migrate Job takes the owner's Secret, the pods the runtime role's and its password file.
check bash -c "awk '/^kind: Job/,/^---/' '$OUT/least-privilege.yaml' | grep -q 'name: relay-owner-db'"
check bash -c "! awk '/^kind: Deployment/,/^---/' '$OUT/least-privilege.yaml' | grep -q 'relay-owner-db'"
check grep -q 'secretName: relay-runtime-db-password' "$OUT/least-privilege.yaml"
check grep -q 'password_file = "/var/run/secrets/outbox-relay/database/password"' "$OUT/least-privilege.yaml"
check grep -q 'kind: PodDisruptionBudget' "$OUT/rabbitmq.yaml"
check grep -q 'kind: ServiceMonitor' "$OUT/monitoring.yaml"
check bash -c "! grep -q 'grafana_dashboard' '$OUT/rabbitmq.yaml'"   # off by default
# The dashboard ConfigMap: labelled for the Grafana sidecar, carrying the JSON in config/.
check "$PWD/.tools/venv/bin/python" - "$OUT/monitoring.yaml" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "ConfigMap"
        and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
assert len(docs) == 1, f"{len(docs)} dashboard ConfigMaps"
shipped = json.loads(docs[0]["data"]["outbox-relay.json"])
assert shipped == json.load(open("config/grafana/outbox-relay.json")), "dashboard differs from config/"
assert docs[0]["metadata"]["annotations"]["grafana_folder"] == "Outbox"
PY
check bash -c "! helm template x helm/outbox-relay >/dev/null 2>&1"   # missing secrets must fail the render

echo "== rendered config.toml is accepted by the relay"
cargo build --quiet --locked --bin outbox-relay
for name in rabbitmq sqs-irsa; do
  "$PWD/.tools/venv/bin/python" - "$OUT/$name.yaml" "$OUT/$name.toml" <<'PY'
import sys, yaml
cm = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "ConfigMap"][0]
open(sys.argv[2], "w").write(cm["data"]["config.toml"])
PY
  check env OUTBOX_RELAY_BROKER__RABBITMQ__URL=amqp://u:p@mq:5672/%2f target/debug/outbox-relay --config "$OUT/$name.toml" config
done

echo "== prometheus rules"
check promtool check rules config/prometheus-rules.yaml
"$PWD/.tools/venv/bin/python" - "$OUT/monitoring.yaml" "$OUT/chart-rules.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
assert docs, "no PrometheusRule rendered"
yaml.safe_dump({"groups": docs[0]["spec"]["groups"]}, open(sys.argv[2], "w"))
PY
check promtool check rules "$OUT/chart-rules.yaml"
# The chart installs the same alerts as config/ (the docs say so): same names, same
# expressions but for the chart's namespace selector and its configurable age threshold
# (tests/packaging/monitoring.yaml sets 120), same `for` and severity.
check "$PWD/.tools/venv/bin/python" - "$OUT/chart-rules.yaml" config/prometheus-rules.yaml <<'PY'
import re, sys, yaml
def alerts(path):
    rules = [r for g in yaml.safe_load(open(path))["groups"] for r in g["rules"] if "alert" in r]
    found = {}
    for r in rules:
        expr = " ".join(r["expr"].replace('{namespace="outbox"}', "").split())
        if r["alert"] == "OutboxOldestEligibleEventTooOld":
            assert re.search(r"> (120|300)$", expr), expr
            expr = re.sub(r"> \d+$", "> threshold", expr)
        found[r["alert"]] = (expr, r.get("for"), r["labels"]["severity"])
    return found
chart, shipped = alerts(sys.argv[1]), alerts(sys.argv[2])
assert chart.keys() == shipped.keys(), f"chart {sorted(chart)} vs config {sorted(shipped)}"
for name in chart:
    assert chart[name] == shipped[name], f"{name}: chart {chart[name]} vs config {shipped[name]}"
PY

echo "== Dockerfile"
check hadolint --failure-threshold warning Dockerfile
check grep -Eq '^FROM rust:[0-9]+\.[0-9]+\.[0-9]+-slim-bookworm AS builder' Dockerfile
check grep -Eq '^FROM gcr.io/distroless/cc-debian12:nonroot' Dockerfile
check grep -q 'cargo build --release --locked --bin outbox-relay' Dockerfile
check grep -Eq '^ENTRYPOINT \["/usr/local/bin/outbox-relay"\]' Dockerfile
check grep -Eq '^USER 65532' Dockerfile
check grep -q 'OUTBOX_RELAY_LOG__FORMAT=json' Dockerfile
check bash -c "! grep -Eiq '^(COPY|ADD) .*config' Dockerfile"
check grep -q '^target/' .dockerignore

if [ "$failures" -gt 0 ]; then
  echo "packaging checks: $failures failed"
  exit 1
fi
echo "packaging checks: all passed"
