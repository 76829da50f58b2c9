#!/usr/bin/env bash
# Property-based fuzzing of the control plane's REST API from its own OpenAPI document
# (schemathesis, from PyPI into scripts/.venv): a real etcd and a real control plane with TLS
# and authentication (its development identity: the administrator's token, the development
# root), every operation called with generated valid and invalid inputs, every answer checked:
# no 5xx, only documented statuses, content types, headers and bodies that match the document.
# Bounded: EXAMPLES per operation (default 20) and BULWARK_API_FUZZ_SECONDS in all (default 90),
# generated deterministically (the same cases every run). The README's test command runs it;
# `bash scripts/api-fuzz.sh 500` runs longer. Needs the built control-plane binary
# (cargo build --workspace --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-20}"
SCHEMATHESIS_VERSION=4.32.5
VENV=scripts/.venv

if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "==> installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
bin=target/debug/control-plane
[ -x "$bin" ] || { echo "$bin not built: run cargo build --workspace --bins" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port); peer_port=$(free_port); http_port=$(free_port); grpc_port=$(free_port)
etcd --name api-fuzz --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "api-fuzz=http://127.0.0.1:$peer_port" --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$bin" --etcd-endpoints "http://127.0.0.1:$etcd_port" \
  --http "127.0.0.1:$http_port" --grpc "127.0.0.1:$grpc_port" --replica-id api-fuzz \
  --dev-identity "$work/dev" --ready-file "$work/ready.json" \
  --writes-per-second 10000 --write-burst 10000 >"$work/control-plane.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [ -f "$work/ready.json" ] && break; sleep 0.1; done
[ -f "$work/ready.json" ] || { echo "the control plane did not start:" >&2; cat "$work/control-plane.log" >&2; exit 1; }

# The watches (/v1/watch/...) stream until their timeout (a second at least): a fuzzer would
# wait on each; their answers, refusals and limits are tested end to end instead.
echo "==> schemathesis: every operation of /openapi.json but the watches, $examples examples each"
status=0
"$VENV/bin/schemathesis" run "https://127.0.0.1:$http_port/openapi.json" \
  --tls-verify "$work/dev/root.pem" \
  -H "Authorization: Bearer $(cat "$work/dev/admin.token")" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$examples" --max-time "${BULWARK_API_FUZZ_SECONDS:-90}" \
  --exclude-path-regex '^/v1/watch/' \
  --generation-deterministic --no-color --report-dir "$work/report" || status=$?
if [ "$status" -ne 0 ]; then
  echo "==> the control plane's log (last lines)" >&2
  tail -40 "$work/control-plane.log" >&2
fi
exit "$status"
