#!/usr/bin/env bash
# Fails when the dependency graph holds two versions of a crate that must exist once.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> one version each of tokio, hyper, tower, tonic, prost, http, h2"
dups=$(cargo tree --workspace -d --depth 0 -e normal,build 2>/dev/null \
  | grep -E '^(tokio|hyper|tower|tonic|prost|http|h2|rustls) v' || true)
if [ -n "$dups" ]; then
  echo "duplicate versions of core crates:" >&2
  echo "$dups" >&2
  exit 1
fi
