#!/usr/bin/env bash
# Coverage-guided fuzzing on a stable toolchain: the sancov instrumentation
# cargo-fuzz adds is available through stable `-C` flags; only the
# sanitizers (`-Zsanitizer=address`) need nightly, so this runs without them.
# Usage: fuzz/run-stable.sh [TARGET] [libFuzzer args…]
# e.g.   fuzz/run-stable.sh iommu_request -max_total_time=300
set -euo pipefail
cd "$(dirname "$0")"
target="${1:-iommu_request}"
shift || true
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target-dir target/sancov --bin "$target"
bin=$(find target/sancov -path "*/release/$target" -type f | head -n1)
mkdir -p "corpus/$target" "artifacts/$target"
exec "$bin" "corpus/$target" -artifact_prefix="artifacts/$target/" "$@"
