#!/usr/bin/env bash
# Import benchmark: N synthetic official-format .pt files (float32
# [2,5,15,15], zip serialization, ImageNet layout) in a tar, imported with
# `lmap import` at f16 and f32. Prints records/s and bytes per record (store
# file size / records, and the compressed record payload alone) next to the
# official release's 10,240 bytes per image inside its tar.
#
#   tests/bench/bench_import.sh [N]        (default 100000)
# Env: LMAP_BIN (default build/lmap), BENCH_DIR (default /tmp/lmap-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-100000}
lmap=${LMAP_BIN:-build/lmap}
dir=${BENCH_DIR:-/tmp/lmap-bench}
mkdir -p "$dir"
tar="$dir/official-$n.tar"
if [ ! -f "$tar" ]; then
  echo "generating $tar ..." >&2
  /usr/bin/python3 tests/bench/make_official_tar.py --images "$n" --seed 7 "$tar.tmp"
  mv "$tar.tmp" "$tar"
fi
tar_bytes=$(stat -c %s "$tar")
printf '%-8s %10s %12s %14s %14s %12s\n' encoding records records/s file_B/rec payload_B/rec tar_B/rec
for enc in f16 f32; do
  store="$dir/bench-$enc.lmap"
  log=$("$lmap" import "$tar" -o "$store" --encoding "$enc" --force --no-progress 2>&1 | tail -1)
  records=$(echo "$log" | sed -E 's/.*: ([0-9]+) records.*/\1/')
  rate=$(echo "$log" | sed -E 's/.* ([0-9]+) records\/s.*/\1/')
  payload=$(echo "$log" | sed -E 's/.* ([0-9]+) bytes\/record.*/\1/')
  file=$(stat -c %s "$store")
  awk -v e="$enc" -v r="$records" -v s="$rate" -v f="$file" -v p="$payload" -v t="$tar_bytes" \
    'BEGIN { printf "%-8s %10d %12d %14.0f %14d %12.0f\n", e, r, s, f / r, p, t / r }'
  rm -f "$store"
done
