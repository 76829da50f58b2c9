#!/usr/bin/env bash
# A quick look at what the sidecar adds to a call: HTTP/1.1 (wrk) and gRPC unary (h2load),
# direct to the test upstream and through the sidecar, plus the sidecar's CPU time and memory.
# The sidecar runs on core 0 with one worker thread; the upstream and the load tools on core 1.
# Usage: bench/quick.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
cargo build --quiet --release --locked -p bulwark-sidecar -p bulwark-tests --bins

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir "$work/policies"
cp examples/demo/catalog.yaml "$work/policies/"
taskset -c 1 target/release/bulwark-upstream --http 127.0.0.1:18081 --grpc 127.0.0.1:19091 >/dev/null 2>&1 &
pids+=($!)
taskset -c 0 target/release/sidecar --policies "$work/policies" --namespace shop --workers 1 \
  --outbound 127.0.0.1:15001 --inbound 127.0.0.1:15006 --admin 127.0.0.1:15000 \
  --log warn --ready-file "$work/ready.json" >"$work/sidecar.log" 2>&1 &
sidecar=$!
pids+=($sidecar)
for _ in $(seq 100); do [ -f "$work/ready.json" ] && break; sleep 0.1; done

rss() { awk -v k="$2" '$1==k":" {print $2/1024 " MiB"}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "sidecar idle RSS: $(rss "$sidecar" VmRSS)"

# A gRPC unary request body (EchoRequest{message:"hi"} with the 5-byte gRPC frame header).
printf '\x00\x00\x00\x00\x04\x0a\x02hi' >"$work/grpc.bin"

run_wrk() { # name url [host]
  local out
  out=$(taskset -c 1 wrk -t1 -c16 -d"${secs}s" --latency ${3:+-H "Host: $3"} "$2")
  printf '%-22s %10s req/s  p50 %-8s p99 %-8s\n' "$1" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")"
}
run_h2load() { # name url authority
  local out
  out=$(taskset -c 1 h2load -c4 -m16 -D "$secs" -d "$work/grpc.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' -H ":authority: $3" "$2" 2>&1)
  printf '%-22s %10s req/s  mean %-8s (%s)\n' "$1" \
    "$(awk '/finished in/ {print $4}' <<<"$out")" \
    "$(awk '/time for request:/ {print $6}' <<<"$out")" \
    "$(awk '/requests:/ {print $8, $9, $10, $11}' <<<"$out" | head -1)"
}

t0=$(cpu_ticks "$sidecar")
echo "== HTTP/1.1, wrk 16 connections, ${secs}s"
run_wrk "direct" "http://127.0.0.1:18081/status/200"
run_wrk "through the sidecar" "http://127.0.0.1:15001/status/200" "catalog"
echo "== gRPC unary, h2load 4 connections x 16 streams, ${secs}s"
run_h2load "direct" "http://127.0.0.1:19091/bulwark.test.v1.Echo/Unary" "dispatch"
run_h2load "through the sidecar" "http://127.0.0.1:15001/bulwark.test.v1.Echo/Unary" "dispatch"
t1=$(cpu_ticks "$sidecar")
total=$(curl -s http://127.0.0.1:15000/metrics 2>/dev/null | awk '/^bulwark_requests_total/ {s+=$2} END {print s+0}' || echo 0)
echo "sidecar peak RSS: $(rss "$sidecar" VmHWM); CPU $(( (t1 - t0) * 10 )) ms for $total requests"
