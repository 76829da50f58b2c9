#!/usr/bin/env bash
# The local demo: builds everything, starts the test upstreams (HTTP on 127.0.0.1:18081, gRPC on
# 127.0.0.1:19091, a flaky one on 18082) and the sidecar in standalone mode with the policies in
# examples/demo/, sends HTTP/1.1, HTTP/2 and gRPC traffic through it (retries, a breaker, a
# failover), reloads a policy; then starts etcd, the control plane and a sidecar following it,
# pushes examples/ with meshctl and shows convergence; a sidecar of the order orchestrator
# reports its health and an operator forces EMERGENCY (meshctl degrade, status, events); the
# control plane runs a development identity authority (--dev-identity): it serves TLS, every
# sidecar streams with its workload certificate, meshctl uses a context with the development
# root and administrator token (and shows the audit log), and two sidecars talk mutual TLS: the
# callee's app sees the caller's verified identity, plaintext is refused, and meshctl pods shows
# every pod's identity. Everything stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/prerequisites.sh
. scripts/prerequisites.sh
install_prerequisites

echo "==> building the sidecar and the demo tools"
cargo build --quiet --locked -p bulwark-sidecar -p bulwark-control-plane -p meshctl -p bulwark-tests --bins

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp examples/demo/*.yaml "$work/"
mkdir -p "$work/policies" && mv "$work"/*.yaml "$work/policies/"

echo "==> starting bulwark-upstream (HTTP 127.0.0.1:18081, gRPC 127.0.0.1:19091) and a flaky one (18082, every other request fails)"
target/debug/bulwark-upstream --http 127.0.0.1:18081 --grpc 127.0.0.1:19091 >"$work/upstream.log" 2>&1 &
pids+=($!)
target/debug/bulwark-upstream --http 127.0.0.1:18082 --grpc 127.0.0.1:19092 --fail-percent 50 >"$work/flaky.log" 2>&1 &
pids+=($!)

echo "==> starting the sidecar: outbound 127.0.0.1:15001, admin 127.0.0.1:15000, policies from examples/demo/"
target/debug/sidecar --policies "$work/policies" --namespace shop \
  --outbound 127.0.0.1:15001 --inbound 127.0.0.1:15006 --admin 127.0.0.1:15000 \
  --upstream-port 127.0.0.1:15101=catalog --reload-interval 200ms \
  --ready-file "$work/ready.json" --log-format json >"$work/sidecar.log" 2>&1 &
sidecar=$!
pids+=($sidecar)
for _ in $(seq 100); do
  [ -f "$work/ready.json" ] && break
  kill -0 "$sidecar" 2>/dev/null || { cat "$work/sidecar.log"; exit 1; }
  sleep 0.1
done
[ -f "$work/ready.json" ] || { echo "the sidecar did not start"; cat "$work/sidecar.log"; exit 1; }

target/debug/bulwark-demo --policies "$work/policies"

echo
echo "── The sidecar's access log (one JSON line per request; last 3):"
grep '"bulwark::access"' "$work/sidecar.log" | tail -3 | sed 's/^/   /'

echo
echo "── SIGTERM: the sidecar drains and exits"
kill -TERM "$sidecar"
status=0
wait "$sidecar" || status=$?
echo "   exit status $status"

echo
echo "══ With the control plane: a local etcd, one control-plane replica, a sidecar following it"
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
  --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
  --initial-cluster demo=http://127.0.0.1:12380 --initial-cluster-state new \
  --logger zap --log-outputs stderr --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
# A development identity authority (a root and an issuer in $work/ca), and join tokens for the
# demo's sidecars: the local stand-ins for the Secret and the ServiceAccount tokens of a cluster.
cat >"$work/tokens.yaml" <<'EOF2'
tokens:
  - { token: storefront-demo-token, namespace: shop, serviceAccount: storefront, pod: storefront-0 }
  - { token: orders-demo-token, namespace: shop, serviceAccount: orders, pod: orders-0 }
  - { token: orch-demo-token, namespace: mrg, serviceAccount: default, pod: orch-0 }
EOF2
echo storefront-demo-token >"$work/storefront.token"
echo orders-demo-token >"$work/orders.token"
echo orch-demo-token >"$work/orch.token"
# TLS on both listeners with a certificate the development issuer signs; the development
# administrator's token is made in $work/ca/admin.token.
target/debug/control-plane --etcd-endpoints http://127.0.0.1:12379 --http 127.0.0.1:18080 \
  --grpc 127.0.0.1:18090 --dev-identity "$work/ca" --join-tokens "$work/tokens.yaml" \
  --ready-file "$work/cp-ready.json" >"$work/control-plane.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do [ -f "$work/cp-ready.json" ] && break; sleep 0.1; done
[ -f "$work/cp-ready.json" ] || { echo "the control plane did not start"; cat "$work/control-plane.log"; exit 1; }
echo "   control plane: REST https://127.0.0.1:18080, gRPC https://127.0.0.1:18090 (etcd on 127.0.0.1:12379)"
target/debug/sidecar --control-plane https://127.0.0.1:18090 --namespace shop --service storefront \
  --pod storefront-0 --snapshot-file "$work/snapshot.json" --report-interval 1s \
  --trust-anchors "$work/ca/root.pem" --service-account storefront \
  --join-token-file "$work/storefront.token" \
  --outbound 127.0.0.1:16001 --inbound 127.0.0.1:16006 --admin 127.0.0.1:16000 \
  --ready-file "$work/ready2.json" >"$work/sidecar2.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$work/ready2.json" ] && break; sleep 0.1; done
# meshctl's context: the server, the development root it verifies it with, and the token.
export BULWARK_CONFIG="$work/meshctl-config"
target/debug/meshctl config set-context demo --server https://127.0.0.1:18080 \
  --ca "$work/ca/root.pem" --token-file "$work/ca/admin.token" | sed 's/^/   /'
echo "── meshctl auth whoami"
target/debug/meshctl auth whoami | sed 's/^/   /'
echo "── with a token the control plane does not know, the API answers 401:"
target/debug/meshctl --token not-a-token status 2>&1 | sed 's/^/   /' || true

echo
echo "── meshctl apply -f examples/ (the production examples) and examples/demo/ (local upstreams)"
target/debug/meshctl apply -f examples/ -f examples/demo/ | sed 's/^/   /'

echo
echo "── meshctl get upstreampolicies -A"
target/debug/meshctl get upstreampolicies -A | sed 's/^/   /'

echo
echo "── The sidecar following the control plane routes what was pushed"
target/debug/bulwark-demo --outbound 127.0.0.1:16001 --probe catalog.shop

echo
echo "── meshctl status: which pods run which version"
target/debug/meshctl status | sed 's/^/   /'

echo
echo "── Degradation: a sidecar of mrg/order-orchestrator reports its health; an operator forces EMERGENCY"
target/debug/sidecar --control-plane https://127.0.0.1:18090 --namespace mrg --service order-orchestrator \
  --pod orch-0 --report-interval 1s \
  --trust-anchors "$work/ca/root.pem" --service-account default --join-token-file "$work/orch.token" \
  --outbound 127.0.0.1:17001 --inbound 127.0.0.1:17006 --admin 127.0.0.1:17000 \
  --ready-file "$work/ready3.json" >"$work/sidecar3.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$work/ready3.json" ] && break; sleep 0.1; done
# Its first health report arrives one report interval after it connects.
for _ in $(seq 50); do
  target/debug/meshctl status 2>/dev/null | grep -qE "mrg/order-orchestrator +NORMAL +- +1 " && break
  sleep 0.2
done
target/debug/meshctl degrade order-orchestrator -n mrg --level EMERGENCY --ttl 1m \
  --reason "payment provider outage" | sed 's/^/   /'
for _ in $(seq 50); do target/debug/meshctl status 2>/dev/null | grep -q "EMERGENCY (forced)" && break; sleep 0.2; done
echo "── meshctl status: levels first, then convergence"
target/debug/meshctl status | sed 's/^/   /'
echo "── meshctl events --limit 5"
target/debug/meshctl events --limit 5 | sed 's/^/   /'
target/debug/meshctl degrade order-orchestrator -n mrg --clear | sed 's/^/   /'
echo "── meshctl audit -A --limit 5: every write, by the authenticated user"
target/debug/meshctl audit -A --limit 5 | sed 's/^/   /'

echo
echo "── Mutual TLS: shop/orders gets a sidecar with its own identity (strict mTLS); storefront calls it"
target/debug/sidecar --control-plane https://127.0.0.1:18090 --namespace shop --service orders \
  --pod orders-0 --report-interval 1s --inbound-mtls strict \
  --trust-anchors "$work/ca/root.pem" --service-account orders --join-token-file "$work/orders.token" \
  --outbound 127.0.0.1:19001 --inbound 127.0.0.1:19006 --admin 127.0.0.1:19000 \
  --ready-file "$work/ready4.json" >"$work/sidecar4.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$work/ready4.json" ] && break; sleep 0.1; done
target/debug/meshctl apply -f - <<'EOF2' | sed 's/^/   /'
apiVersion: bulwark/v1
kind: ServicePolicy
metadata: { name: orders, namespace: shop }
spec:
  app: { port: 18081 }
  serviceAccount: orders
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: orders, namespace: shop }
spec:
  endpoints: { static: ["127.0.0.1:19006"] }
  tls: { mode: mesh }
EOF2
# GET over HTTP/1.1 with bash alone: http_get PORT HOST PATH prints the response.
http_get() {
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$3" "$2" >&3
  cat <&3
  exec 3<&-
}
for _ in $(seq 50); do
  http_get 16001 orders /status/200 2>/dev/null | head -1 | grep -q " 200 " && break
  sleep 0.2
done
echo "   storefront's app → its sidecar (plaintext) → mTLS → orders' sidecar → orders' app; the app sees:"
http_get 16001 orders /headers | tail -1 | grep -oE '"(host|x-bulwark-peer-identity)":\[[^]]*\]' | sed 's/^/     /'
echo "   plaintext straight to orders' sidecar is refused:"
http_get 19006 orders /headers | sed -n '1p;$p' | sed 's/^/     /'
for _ in $(seq 50); do
  [ "$(target/debug/meshctl pods -n shop 2>/dev/null | grep -c 'spiffe://')" -ge 2 ] && break
  sleep 0.2
done
echo "── meshctl pods -n shop: each pod's identity and when its certificate expires"
target/debug/meshctl pods -n shop | sed 's/^/   /'
