#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian/Ubuntu machine: installs what the build and
# the tests need (protoc for etcd-client's build; etcd, which the control-plane tests start on
# loopback), builds the binaries the end-to-end tests start, then runs unit, integration and
# end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs, 1.89 or newer) and run this again" >&2
  exit 1
fi

packages=()
command -v protoc >/dev/null 2>&1 || packages+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || packages+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || packages+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || packages+=(etcd-client)
# deploy/validate.sh installs kubernetes-validate from PyPI into a venv.
command -v python3 >/dev/null 2>&1 || packages+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "==> installing ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

echo "==> building binaries (the end-to-end tests start them)"
cargo build --workspace --bins --locked
echo "==> running tests"
cargo test --workspace --locked "$@"

echo "==> Kubernetes manifests, injector output and Dockerfiles (deploy/validate.sh)"
bash deploy/validate.sh
