#!/usr/bin/env bash
# Runs the chaos suite (tests/tests/chaos: a 3-member etcd, two control-plane replicas, two
# sidecars under open-loop load, one fault at a time) RUNS times (default 1) and prints each
# scenario's figures: requests sent and failed, reconnect and convergence times. The figures
# of the last run are also in target/tmp/chaos/*.json. The README's test command runs the
# suite once as part of every test run; this script is for collecting figures.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-1}"

cargo build --workspace --bins --locked
for run in $(seq 1 "$runs"); do
  echo "==> chaos run $run of $runs"
  cargo test -p bulwark-tests --test chaos --locked -- --nocapture 2>&1 |
    grep -E '^chaos figures: |^test result' | sed 's/^chaos figures: //'
done
