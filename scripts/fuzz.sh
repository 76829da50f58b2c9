#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 30) with cargo fuzz on
# stable Rust (no sanitizer: `-s none`; libFuzzer's coverage guidance still works), from a
# corpus seeded with fuzz/seeds/TARGET, the policy examples and the inject goldens. A crash
# stops the run and leaves its input in fuzz/artifacts/TARGET/; make it a regression test
# (see docs/reliability.md) before fixing it. The README's test command runs this for a
# bounded time; run it longer by hand: `bash scripts/fuzz.sh 3600`, or one target:
# `bash scripts/fuzz.sh 600 http1`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(policy units http1 sidecar_messages admission_review)
fi

if ! command -v cargo-fuzz >/dev/null; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
if ! command -v protoc >/dev/null; then
  echo "protoc is needed (Debian's protobuf-compiler) to encode the Discovery seeds" >&2
  exit 1
fi

seed() {
  local target="$1" corpus="fuzz/corpus/$1"
  mkdir -p "$corpus"
  cp fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  case "$target" in
    policy) cp examples/*.yaml "$corpus"/ ;;
    sidecar_messages)
      for text in fuzz/seeds/sidecar_messages/*.txt; do
        protoc --encode=bulwark.v1.SidecarMessage -I proto proto/bulwark/v1/discovery.proto \
          <"$text" >"$corpus/$(basename "$text" .txt).bin"
        rm -f "$corpus/$(basename "$text")"
      done
      ;;
  esac
}

cd fuzz
echo "==> building the fuzz targets"
cargo fuzz build -s none
cd ..
for target in "${targets[@]}"; do
  seed "$target"
  echo "==> fuzzing $target for ${seconds}s"
  (cd fuzz && cargo fuzz run -s none "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1) |
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==|SUMMARY|thread .* panicked)|artifact_prefix|Test unit written' || true
  if ls fuzz/artifacts/"$target"/crash-* fuzz/artifacts/"$target"/timeout-* fuzz/artifacts/"$target"/oom-* >/dev/null 2>&1; then
    echo "fuzz target $target found a failing input: fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
