#!/usr/bin/env bash
# Copies the files the Helm chart ships but does not own into the chart
# (Helm cannot read files outside the chart directory):
#   deploy/grafana/dashboards/*.json       -> deploy/helm/xinhe/files/dashboards/
#   deploy/prometheus/rules/*.yml|*.yaml   -> deploy/helm/xinhe/files/rules/
#   controlplane/model/chips.yaml          -> deploy/helm/xinhe/files/chips.yaml
# The chart's copies become exactly the sources: stale copies are removed.
# tests/deploy/test_chart_files.py fails whenever they drift; run this then.
set -euo pipefail
cd "$(dirname "$0")/.."
CHART=deploy/helm/xinhe/files

mirror() {  # mirror SOURCE_DIR DEST_DIR GLOB...
  local src="$1" dest="$2"
  shift 2
  rm -rf "$dest"
  [ -d "$src" ] || return 0
  local files=()
  for pattern in "$@"; do
    while IFS= read -r -d '' f; do files+=("$f"); done \
      < <(find "$src" -maxdepth 1 -type f -name "$pattern" -print0)
  done
  [ "${#files[@]}" -gt 0 ] || return 0
  mkdir -p "$dest"
  cp -p "${files[@]}" "$dest/"
}

mirror deploy/grafana/dashboards "$CHART/dashboards" '*.json'
mirror deploy/prometheus/rules "$CHART/rules" '*.yml' '*.yaml'
cp -p controlplane/model/chips.yaml "$CHART/chips.yaml"
echo "chart files synced: $(find "$CHART" -type f | wc -l) files under $CHART"
