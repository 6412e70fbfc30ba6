#!/usr/bin/env bash
# Installs the external tools the test suite uses for real (helm, prometheus,
# ...): each scripts/tools/*.sh installs one, idempotently, into .tools/ or via
# the system package manager. Called by `make test` and so by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
for tool in scripts/tools/*.sh; do
  bash "$tool"
done
