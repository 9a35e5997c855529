#!/usr/bin/env bash
# The soak: the real lmapd under mixed valid and hostile traffic with
# reloads, for SECONDS (default 20), its RSS, descriptors, threads and held
# store files sampled before, during and after; they must come back to the
# baseline. See tests/soak/soak.py for the traffic and the margins.
#
#   tests/soak/run.sh [SECONDS] [LMAPD [LMAP]]
#
# The binaries: arguments, else LMAPD_BIN / LMAP_BIN, else build/lmapd and
# build/lmap. LMAP_SOAK_THREADS sets lmapd --threads (default 3);
# LMAP_SOAK_TMP keeps the stores and lmapd's log in that directory (by
# default a fresh temporary directory, removed when the soak passes).
# Exit status: 0 passed, 1 failed (the reasons are printed last).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-20}
lmapd=${2:-${LMAPD_BIN:-$root/build/lmapd}}
lmap=${3:-${LMAP_BIN:-$root/build/lmap}}
for b in "$lmapd" "$lmap"; do
  [ -x "$b" ] || { echo "soak: no executable $b (build first, or pass LMAPD LMAP)" >&2; exit 2; }
done
args=("$seconds" "$lmapd" "$lmap" --threads "${LMAP_SOAK_THREADS:-3}")
[ -n "${LMAP_SOAK_TMP:-}" ] && args+=(--tmp "$LMAP_SOAK_TMP")
exec /usr/bin/python3 "$root/tests/soak/soak.py" "${args[@]}"
