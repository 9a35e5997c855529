#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -DLMAP_FUZZ=ON, in build-fuzz/) and
# runs each for SECONDS (default 20), one after the other, with a memory
# bound and a timeout per input; prints executions per second and coverage
# per target, and fails if any target crashed, leaving the crashing input
# in build-fuzz/fuzz-work/crashes/<target>/ (reproduce it with
# `build-fuzz/tests/fuzz/fuzz_<target> FILE`; once fixed, commit it under
# tests/fuzz/regress/<target>/ so that ctest runs it from then on).
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
#   LMAP_FUZZ_BUILD=DIR   build directory (default build-fuzz)
#   LMAP_FUZZ_RSS_MB=N    memory bound per target (default 2048)
#   LMAP_FUZZ_KEEP_GOING=1  go on after a crash (libFuzzer's fork mode with
#                         -ignore_crashes): every crashing input is kept, and
#                         the target still fails; for long runs that must not
#                         stop at a known bug
#
# New inputs that reach new code are kept in build-fuzz/fuzz-work/corpus
# (not committed), so a later run starts where the last one stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-20}
shift || true
all=(api ptfile tar chunk codec store_open wire_json wire_npy wire_sparse)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
build=${LMAP_FUZZ_BUILD:-build-fuzz}
rss=${LMAP_FUZZ_RSS_MB:-2048}

CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLMAP_FUZZ=ON -DLMAP_WERROR=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz_all >/dev/null

work=$build/fuzz-work
mkdir -p "$work"
# Scratch files (the stores the targets make, the inputs written out for
# LMDB and libarchive) on a RAM disk when there is one.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch=$(mktemp -d /dev/shm/lmap-fuzz.XXXXXX)
else
  scratch=$(mktemp -d "$work/tmp.XXXXXX")
fi
trap 'rm -rf "$scratch"' EXIT

# A UBSan report is a crash like any other.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0}

max_len() {
  case $1 in
    api | wire_json | wire_npy | wire_sparse) echo 8192 ;;
    chunk | codec) echo 16384 ;;
    *) echo 65536 ;;
  esac
}

printf '%-11s %9s %10s %7s %7s %s\n' target seconds execs/s cov ft result
failed=0
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/fuzz_$t
  [ -x "$bin" ] || { echo "no fuzz target '$t' (one of: ${all[*]})" >&2; exit 2; }
  mkdir -p "$work/corpus/$t" "$work/crashes/$t"
  seeds=()
  for d in tests/fuzz/corpus/"$t" tests/fuzz/regress/"$t"; do
    [ -d "$d" ] && seeds+=("$d")
  done
  [ "$t" = ptfile ] && seeds+=(tests/vectors/pt)
  dict=()
  case $t in
    api | wire_json) dict=(-dict=tests/fuzz/json.dict) ;;
    wire_npy) dict=(-dict=tests/fuzz/npy.dict) ;;
    wire_sparse) dict=(-dict=tests/fuzz/sparse.dict) ;;
  esac
  keep=()
  [ -n "${LMAP_FUZZ_KEEP_GOING:-}" ] &&
    keep=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  log=$work/$t.log
  before=$(ls "$work/crashes/$t" | wc -l)
  rc=0
  TMPDIR=$scratch "$bin" -max_total_time="$seconds" -rss_limit_mb="$rss" \
    -malloc_limit_mb="$rss" -timeout=10 -max_len="$(max_len "$t")" \
    -print_final_stats=1 -artifact_prefix="$work/crashes/$t/" "${dict[@]}" "${keep[@]}" \
    "$work/corpus/$t" "${seeds[@]}" >"$log" 2>&1 || rc=$?
  # The last status line ("#N DONE cov: X ft: Y ..." or the last pulse;
  # "#N: cov: X ft: Y ... exec/s: E" in fork mode) and the final stats.
  last=$(grep -E '^#[0-9]+.* cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  [ -n "$eps" ] || eps=$(sed -n 's/.* exec\/s:\? \([0-9]*\).*/\1/p' <<<"$last")
  after=$(ls "$work/crashes/$t" | wc -l)
  [ "$after" -gt "$before" ] && rc=${rc/#0/1}
  if [ $rc -eq 0 ]; then
    result=ok
  else
    failed=1
    crash=$(ls -t "$work/crashes/$t/" 2>/dev/null | head -1)
    result="CRASH (exit $rc, $((after - before)) new): $work/crashes/$t/$crash, log $log"
  fi
  printf '%-11s %9s %10s %7s %7s %s\n' "$t" "$seconds" "${eps:-?}" "${cov:-?}" \
    "${ft:-?}" "$result"
done
exit $failed
