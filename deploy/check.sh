#!/usr/bin/env bash
# Checks deploy/ without a cluster or a container runtime (deploy/README.md says what each
# check is): the Kubernetes overlays render with kubectl's kustomize and validate against the
# Kubernetes schemas, Checkov finds nothing beyond checkov-accepted.txt, the Compose file
# validates against the Compose specification's JSON Schema, the HAProxy configuration
# parses, and the Containerfile passes hadolint.
#
# Needs kubectl, haproxy and the Python tools of deploy/requirements.txt; scripts/test.sh
# installs them (the tools into .venv-deploy). Run from anywhere:  deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")"
venv="${SLUICE_DEPLOY_VENV:-../.venv-deploy}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== kustomize: every overlay renders"
for overlay in kubernetes/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  echo "$name: $(grep -c '^kind:' "$out/$name.yaml") objects"
done

echo "== kubernetes-validate: every object against the Kubernetes 1.30 and 1.37 schemas"
for version in 1.30.0 1.37.0; do
  # The ServiceMonitor's kind is a CRD with no schema here: a warning, not an error.
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$out"/*.yaml
done

echo "== checkov: no misconfiguration beyond checkov-accepted.txt"
skip="$(grep -v '^#' checkov-accepted.txt | awk 'NF {print $1}' | paste -sd, -)"
"$venv/bin/checkov" -d "$out" --framework kubernetes --compact --quiet --skip-download \
  --skip-check "$skip"

echo "== compose: compose.yaml against the Compose specification's schema"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose/compose.yaml

echo "== haproxy -c: the balancer's configuration"
haproxy -c -q -f compose/haproxy.cfg

echo "== hadolint: the Containerfile"
"$venv/bin/hadolint" --failure-threshold warning container/Containerfile

echo "deploy/ checks passed"
