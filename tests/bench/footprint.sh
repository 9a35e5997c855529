#!/usr/bin/env bash
# Resident memory of a process that is not its mapped store.
#
#   footprint.sh PID STORE                     one sample: "rss_kib store_rss_kib other_kib"
#   footprint.sh PID STORE SECONDS [INTERVAL]  sample every INTERVAL seconds
#                       (default 1) for SECONDS, until PID exits, or until
#                       SIGTERM; print the sample with the largest other_kib
#
# A sample is not free: reading smaps walks the page tables of every
# mapping, about 30-60 ms of kernel time for a 2.5 GB store mapped in full, so
# the run script samples during loads it does not report as headline figures.
#
# rss_kib is the sum of the Rss lines of /proc/PID/smaps (every resident
# page the process maps: heap, stacks, libraries, the store; what
# smaps_rollup sums); store_rss_kib the sum over the mappings whose path is STORE
# (after realpath; LMDB maps the store file read-only and shared, so those
# pages are page cache the kernel may drop, not memory the daemon owns);
# other_kib the difference: what the daemon costs beyond the store. Used by
# tests/bench/run.sh under load. Reads /proc only; never signals PID.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: footprint.sh PID STORE [SECONDS [INTERVAL]]" >&2; exit 2; }
pid=$1
store=$(realpath -- "$2")
secs=${3:-}
interval=${4:-1}

sample() { # one pass over smaps: every mapping's Rss, and the store's
  # A mapping header is "start-end perms offset dev inode [path]"; the path
  # may hold spaces, so it is everything from field 6 on.
  awk -v s="$store" '
    /^[0-9a-f]+-[0-9a-f]+ / { p = ""; for (i = 6; i <= NF; i++) p = p (i > 6 ? " " : "") $i; next }
    $1 == "Rss:" { all += $2; if (p == s) st += $2 }
    END { if (NR == 0) exit 1; printf "%d %d %d\n", all, st, all - st }' "/proc/$pid/smaps" 2>/dev/null
}

if [ -z "$secs" ]; then
  sample
  exit
fi
best="" best_other=-1
report() {
  [ -n "$best" ] || { echo "footprint.sh: no sample of process $pid" >&2; exit 1; }
  echo "$best"
  exit 0
}
trap report TERM INT
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "${t#0}"; }
end=$(( $(now_us) + $(awk -v s="$secs" 'BEGIN { printf "%d", s * 1e6 }') ))
while [ -d "/proc/$pid" ] && [ "$(now_us)" -le "$end" ]; do
  if s=$(sample); then
    read -r _ _ other <<< "$s"
    if [ "$other" -gt "$best_other" ]; then best=$s best_other=$other; fi
  fi
  sleep "$interval" &
  wait $! || true
done
report
