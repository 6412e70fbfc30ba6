#!/usr/bin/env bash
# Installs prometheus and promtool (Debian's `prometheus` package) for the
# observability tests: the e2e test runs a real Prometheus against a local
# fleet, and the alert-rule tests run `promtool test rules`.
#
# Idempotent and fast when both binaries are already there (on PATH or under
# .tools/bin). Debian's package may start its own service on :9090; the tests
# ignore it and run their own prometheus with their own config, data
# directory and port. Links the binaries into .tools/bin so tests find them
# in one place.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS_BIN=.tools/bin

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$TOOLS_BIN/$1" ]; }

if have prometheus && have promtool; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "prometheus.sh: apt-get not found; install prometheus and promtool yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
if ! install; then
  # Package lists may be missing or stale on a fresh machine.
  $SUDO apt-get update -q >/dev/null
  install
fi

mkdir -p "$TOOLS_BIN"
for tool in prometheus promtool; do
  path="$(command -v "$tool")"
  ln -sf "$path" "$TOOLS_BIN/$tool"
done
"$TOOLS_BIN/promtool" --version 2>&1 | head -n 1
