#!/usr/bin/env bash
# Brings up the services the relay's tests and demo need, on this machine:
#   PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth for local TCP),
#   RabbitMQ on 127.0.0.1:5672 (guest/guest),
#   an SQS emulator (moto) on 127.0.0.1:4566 (pass --no-sqs to skip it),
#   and the tools the monitoring tests run: Debian's prometheus (prometheus + promtool; the
#   tests start their own server on a free port) and chromium (the status page test).
# A service already listening on its port is left alone; an installed but stopped one is
# started; a missing one is installed (apt-get / pip). Idempotent; safe to run repeatedly.
set -euo pipefail

WANT_SQS=1
for arg in "$@"; do
  case "$arg" in
    --no-sqs) WANT_SQS=0 ;;
    *) echo "usage: $0 [--no-sqs]" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
APT_UPDATED=0

log() { printf '[services] %s\n' "$*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do
    if listening "$port"; then return 0; fi
    sleep 0.5
  done
  log "$name did not start listening on port $port"
  return 1
}

apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if listening 5432; then log "postgres: already listening"; return; fi
  local fresh=0
  if ! command -v pg_lsclusters >/dev/null; then
    log "postgres: installing"
    apt_install postgresql
    fresh=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  if [ "$fresh" = 1 ]; then
    # Tests and the demo connect as postgres over TCP without a password.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    # apt may have started the cluster already: make it read the new pg_hba.conf.
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
  fi
  log "postgres: starting cluster $version/main"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 postgres
}

ensure_rabbitmq() {
  if listening 5672; then log "rabbitmq: already listening"; return; fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "rabbitmq: installing"
    apt_install rabbitmq-server
  fi
  log "rabbitmq: starting"
  $SUDO rabbitmq-server -detached || true
  wait_port 5672 rabbitmq 240
  # The port opens before the app is fully booted.
  $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_sqs() {
  if listening 4566; then log "sqs emulator: already listening"; return; fi
  if ! command -v moto_server >/dev/null; then
    log "sqs emulator: installing moto[server] from PyPI"
    if ! python3 -m pip --version >/dev/null 2>&1; then apt_install python3-pip; fi
    # Debian's own python3 refuses a plain `pip install` (PEP 668); the project needs only
    # this one command-line tool from it.
    python3 -m pip install -q 'moto[server]' ||
      $SUDO python3 -m pip install -q --break-system-packages 'moto[server]'
    hash -r
    # A per-user install lands in ~/.local/bin, which may not be on PATH.
    command -v moto_server >/dev/null || PATH="$(python3 -m site --user-base)/bin:$PATH"
  fi
  log "sqs emulator: starting moto on 127.0.0.1:4566"
  mkdir -p "${TMPDIR:-/tmp}/outbox-relay"
  nohup moto_server -H 127.0.0.1 -p 4566 >"${TMPDIR:-/tmp}/outbox-relay/moto.log" 2>&1 &
  wait_port 4566 "sqs emulator"
}

# Tools the tests call: openssl makes the certificates of the TLS tests' own servers.
ensure_tools() {
  if ! command -v openssl >/dev/null; then log "openssl: installing"; apt_install openssl; fi
}

ensure_prometheus() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    log "prometheus: installed"; return
  fi
  log "prometheus: installing (Debian package: prometheus, promtool)"
  apt_install --no-install-recommends prometheus
  # The tests start their own Prometheus on free ports; the package's service (where systemd
  # starts it) would hold 9090, the relay's default metrics port.
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
}

ensure_chromium() {
  if command -v chromium >/dev/null; then log "chromium: installed"; return; fi
  log "chromium: installing (Debian package, run headless by the status page test)"
  apt_install --no-install-recommends chromium
}

ensure_postgres
ensure_rabbitmq
ensure_tools
ensure_prometheus
ensure_chromium
if [ "$WANT_SQS" = 1 ]; then ensure_sqs; fi
log "ready"
