#!/usr/bin/env bash
# deploy/k8s rendered (kubectl kustomize) for the base and each overlay, every
# object validated against the Kubernetes API schemas offline (npm
# kubernetes-models: tests/deploy/k8s/validate.mjs) and checked for what
# lmap needs of it (check_k8s.py). There is no cluster here.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v kubectl >/dev/null; then
  deploy/install-deps.sh kubernetes-client
fi
command -v node >/dev/null || {
  echo "test_k8s: node is required (Node.js and npm)" >&2
  exit 1
}
(cd tests/deploy/k8s && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for variant in base overlays/shared-volume; do
  kubectl kustomize "deploy/k8s/$variant" >"$out"
  node tests/deploy/k8s/validate.mjs <"$out"
  /usr/bin/python3 tests/deploy/check_k8s.py "$(basename "$variant")" <"$out"
done
