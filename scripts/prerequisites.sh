# Sourced by demo.sh and test.sh: checks for cargo and installs, with apt, the system packages
# the build needs (protoc and the protobuf well-known types for etcd-client) plus those the
# caller names, each only when missing. Usage: install_prerequisites [with-tests]
install_prerequisites() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs, 1.89 or newer) and run this again" >&2
    exit 1
  fi
  local packages=()
  command -v protoc >/dev/null 2>&1 || packages+=(protobuf-compiler)
  [ -f /usr/include/google/protobuf/descriptor.proto ] || packages+=(libprotobuf-dev)
  command -v etcd >/dev/null 2>&1 || packages+=(etcd-server)
  if [ "${1:-}" = with-tests ]; then
    command -v etcdctl >/dev/null 2>&1 || packages+=(etcd-client)
    # Traffic capture tests: network namespaces (ip), both iptables backends, and setpriv to
    # run the sidecar as its own uid.
    command -v ip >/dev/null 2>&1 || packages+=(iproute2)
    { command -v iptables-nft >/dev/null 2>&1 && command -v iptables-legacy >/dev/null 2>&1; } ||
      packages+=(iptables)
    command -v setpriv >/dev/null 2>&1 || packages+=(util-linux)
    # deploy/validate.sh installs kubernetes-validate from PyPI into a venv.
    command -v python3 >/dev/null 2>&1 || packages+=(python3)
    python3 -c 'import ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
    # scripts/fuzz.sh: libfuzzer-sys compiles libFuzzer (C++).
    command -v c++ >/dev/null 2>&1 || packages+=(g++)
    # The dashboard's browser tests: Debian's Chromium, driven by playwright-core under Node.js.
    command -v chromium >/dev/null 2>&1 || packages+=(chromium)
    command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
  fi
  if [ ${#packages[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> installing ${packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
  fi
}
