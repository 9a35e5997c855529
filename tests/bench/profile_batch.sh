#!/usr/bin/env bash
# Where a label's work goes in lmapd's batch path, by stage: lmapd under
# callgrind (instruction counts: repeatable on a shared machine, unlike
# time) answers REQUESTS batches of 256 queries (dense labels) from one liblmap
# client (bench_batch); the instructions of the answering phase only (the
# arena's build and the start are left out) are grouped by stage and
# printed per label, as a table and one JSON line.
#
#   tests/bench/profile_batch.sh STORE [LMAPD [QUERIES [REQUESTS [MODE [ANSWERS]]]]]
#
# LMAPD: the lmapd binary (default build/lmapd); QUERIES: binary or json
# (the request body bench_batch sends); REQUESTS: batches measured
# (default 40); MODE: resident or mapped (default resident); ANSWERS:
# sparse or npy (the answer bench_batch asks for; an lmapd without sparse
# answers gives .npy either way). Kernel time
# (TCP, page faults) is not in the counts: callgrind sees user space only.
# Loopback only; lmapd is stopped by its PID.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
store=${1:?usage: profile_batch.sh STORE [LMAPD [QUERIES [REQUESTS [MODE]]]]}
lmapd=${2:-$src/build/lmapd}
queries=${3:-binary}
requests=${4:-40}
mode=${5:-resident}
answers=${6:-sparse}
bb=${BENCH_BATCH_BIN:-$src/build/tests/bench/bench_batch}
lmap=${LMAP_BIN:-$src/build/lmap}
command -v valgrind > /dev/null || { echo "profile_batch.sh: valgrind is not installed" >&2; exit 1; }
work=$(mktemp -d /tmp/lmap-profile.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2> /dev/null && wait "$pid" 2> /dev/null
  if [ -n "${PROFILE_KEEP:-}" ]; then cp "$work/cg.out" "$PROFILE_KEEP"; fi
  rm -rf "$work"
}
trap cleanup EXIT
"$lmap" ids "$store" > "$work/ids"
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
extra=()
[ "$mode" = resident ] && extra=(--resident)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" \
  "$lmapd" --store "$store" --listen "127.0.0.1:$port" --threads 1 "${extra[@]}" 2> "$work/lmapd.log" &
pid=$!
for ((i = 0; i < 1200; i++)); do # readiness under valgrind: up to 10 minutes
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" 2> /dev/null)" = 200 ] && break
  kill -0 "$pid" 2> /dev/null || { cat "$work/lmapd.log" >&2; exit 1; }
  sleep 0.5
done
callgrind_control -i on "$pid" > /dev/null
"$bb" --url "http://127.0.0.1:$port" --ids "$work/ids" --clients 1 --batch 256 --seconds 600 \
  --max-requests "$requests" --queries "$queries" --answers "$answers" > "$work/bb.json"
callgrind_control -i off "$pid" > /dev/null
kill -TERM "$pid"
wait "$pid" || true
pid=""
labels=$(/usr/bin/python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["labels"])' "$work/bb.json")
callgrind_annotate --auto=no --threshold=100 "$work/cg.out" 2> /dev/null > "$work/flat.txt"
LABELS=$labels MODE=$mode QUERIES=$queries /usr/bin/python3 - "$work/flat.txt" <<'PYEOF'
import json, os, re, sys

# Stage of each function, by the file or library it lives in.
stages = [
    ("pooling (RoIAlign + softmax)",
     r"server/pool/pool\.c|:pool_|:axis_weights|:softmax|e_exp\.c|w_exp|libm\.so|math_config"),
    ("request body (JSON or binary queries)", r"libjansson|queryjson|querybin|strtod|labelmap_id_check|queryopt"),
    ("finding and decoding the record", r"server/store/|libzstd|liblmdb|xxhash|XXH|codec|arena"),
    ("answer copy (libmicrohttpd)", r"memmove|memcpy"),
    ("answer layout (.npy or sparse) and api", r"server/pool/npy|sparsebin|server/daemon/api|dynbuf|itemjson"),
    ("HTTP (libmicrohttpd, the rest)", r"libmicrohttpd|server/daemon/http"),
]
labels = int(os.environ["LABELS"])
counts = {name: 0 for name, _ in stages}
counts["other (libc, allocation, metrics)"] = 0
total = 0
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)", line)
    if not m or "PROGRAM TOTALS" in line:
        continue
    ir, where = int(m.group(1).replace(",", "")), m.group(2)
    total += ir
    for name, pat in stages:
        if re.search(pat, where):
            counts[name] += ir
            break
    else:
        counts["other (libc, allocation, metrics)"] += ir
print("lmapd %s, %s queries: instructions per label (callgrind, %d labels)"
      % (os.environ["MODE"], os.environ["QUERIES"], labels))
for name, ir in counts.items():
    print("  %-42s %8.0f  %5.1f%%" % (name, ir / labels, 100.0 * ir / max(1, total)))
print("  %-42s %8.0f" % ("total", total / labels))
print("JSON " + json.dumps({"mode": os.environ["MODE"], "queries": os.environ["QUERIES"],
                            "labels": labels, "total_ir_per_label": total / labels,
                            "stages_ir_per_label": {k: v / labels for k, v in counts.items()}}))
PYEOF
