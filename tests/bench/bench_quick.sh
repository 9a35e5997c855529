#!/usr/bin/env bash
# The quick benchmark run by ctest (label "bench"): a small synthetic store,
# then the per-stage serving cost. Prints figures; fails only if a step fails.
#   bench_quick.sh LMAP_BIN BENCH_LOOKUP_BIN SCRATCH_DIR
set -euo pipefail
lmap=$1 bench=$2 dir=$3
mkdir -p "$dir"
"$lmap" synth -o "$dir/quick.lmap" --images 5000 --force --no-progress 2>&1 | tail -1
"$bench" "$dir/quick.lmap" 20000
rm -f "$dir/quick.lmap"
