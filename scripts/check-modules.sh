#!/usr/bin/env bash
# Fails when a crate's modules import each other in a circle (scripts/module-graph.py); prints
# the sidecar's graph, the one a reader follows along a request.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> module graphs without cycles"
python3 scripts/module-graph.py sidecar/src
for crate in control-plane meshctl proto inject init tests bench; do
  python3 scripts/module-graph.py "$crate/src" --quiet
done
echo "no module cycle in any crate"
