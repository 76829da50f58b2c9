#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian/Ubuntu machine: installs what the build and
# the tests need (protoc for etcd-client's build; etcd, which the control-plane tests start on
# loopback; Chromium and Node.js with playwright-core for the dashboard's browser tests), builds
# the binaries the end-to-end tests start, then runs unit, integration,
# end-to-end and chaos tests, validates the deployment manifests, fuzzes the REST API from its
# OpenAPI document (schemathesis) and runs every fuzz target for a bounded time
# (BULWARK_FUZZ_SECONDS each, default 20). The capture tests create network
# namespaces and iptables rules, which needs root: run as another user, the script runs itself
# again through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "==> the capture tests create network namespaces: running as root through sudo"
  exec sudo -E env "PATH=$PATH" bash "$0" "$@"
fi

# shellcheck source=scripts/prerequisites.sh
. scripts/prerequisites.sh
install_prerequisites with-tests

echo "==> the dashboard's browser driver (tests/browser: playwright-core, from its lock file)"
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

echo "==> building binaries (the end-to-end tests start them)"
cargo build --workspace --bins --locked
echo "==> running tests"
cargo test --workspace --locked "$@"

echo "==> Kubernetes manifests, injector output and Dockerfiles (deploy/validate.sh)"
bash deploy/validate.sh

echo "==> the REST API fuzzed from its OpenAPI document (scripts/api-fuzz.sh)"
bash scripts/api-fuzz.sh

echo "==> fuzz targets, ${BULWARK_FUZZ_SECONDS:-20}s each (scripts/fuzz.sh; longer runs by hand)"
bash scripts/fuzz.sh "${BULWARK_FUZZ_SECONDS:-20}"

