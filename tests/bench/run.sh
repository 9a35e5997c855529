#!/usr/bin/env bash
# lmap's benchmark: every figure for lmap next to the same figure for its
# peer, measured in the same run on the same machine, and their ratio.
#
#   tests/bench/run.sh [--quick] [BUILD_DIR]
#
# Rows:
#  1. single GET /v1/labels/{id}?box=... (random ids from the whole store,
#     RandomResizedCrop boxes, keep-alive, 64 connections, wrk + Lua), sparse
#     and dense JSON: req/s, p50, p99, server CPU per request. Peer: nginx
#     (Debian's, on its own config) serving a static file of the mean size of
#     lmap's answers, for the same random URLs from the same wrk script. The
#     two alternate in short rounds (3 of 2 s each; quick: 2 of 1 s), and
#     every figure is the median of its rounds.
#  2. POST /v1/labels, 256 queries, dense labels through liblmap (sparse
#     binary answers; also .npy answers and JSON queries, each against the
#     default) from several client threads (bench_batch): labels/s, p99 per
#     batch, CPU per label. Peer:
#     the official ReLabel path (official_peer.py: torch.load of each
#     sample's .pt from a tmpfs copy of the same maps, dense scatter,
#     roi_align, softmax) in 2 DataLoader worker processes.
#  3. store bytes per record (f16, f32) of `lmap import` against the official
#     format's bytes per image in its tar; import records/s against `tar -x`
#     of the same tar (installing the official release).
#  4. lmapd resident memory beyond the mapped store, under load (peers: nginx
#     under its load; the official path's processes, PSS).
#  5. scale: single and batch rows on 1,281,167 records (ImageNet's training
#     set, `lmap synth`) against 10,000; and at 1 against 2 server threads.
#  6-8. lmapd --resident on the main store: single sparse GETs against nginx
#     (alternating rounds), batches against the official path and against
#     the default mode, binary queries against JSON, sparse answers against
#     .npy, resident memory against
#     the arena plus the default mode's, seconds from start to ready.
#  9. a PyTorch DataLoader's images/s (bench_dataloader.py): hard labels,
#     lmap soft labels through lmap.torch (resident lmapd), the official
#     per-image .pt path; and 1-8 trainer processes at 1 and 2 server
#     threads.
# Plus BENCH_DIR/plot.svg (gnuplot): labels/s against batch size and
# against concurrency, and BENCH_DIR/results.json (the table, every raw
# measurement, date, machine, versions).
#
# --quick: a 10,000-record store, short measurements, a small official-peer
# sample, about two minutes; every row is still printed (the scale row with the
# 10,000-record store only). Writes results-quick.json and plot-quick.svg so
# a quick run never replaces the full run's figures. tests/run.sh runs it
# (ctest bench.run_quick) so the benchmark cannot rot; it asserts nothing
# about speed and fails only when a step fails or lmapd answers an error.
#
# Binaries: LMAP_BIN, LMAPD_BIN, LMAP_LIBRARY (liblmap.so), BENCH_BATCH_BIN
# (else bench_batch is compiled against LMAP_LIBRARY), defaults from
# BUILD_DIR (default: build/ of this tree). BENCH_DIR (default
# /tmp/lmap-bench) keeps the stores and tars between runs; the first full
# run makes the 1,281,167-record store (about 65 s, 2.5 GB; skipped with a
# note when less than 6 GB are free) and a 100,000-file official-format tar
# (1 GB, about 26 s) unless present: a first full run takes about 3.5
# minutes, later ones about 2. Loopback only; every load is bounded in time;
# every process started here is stopped by its PID (process group) on exit.
#
# Honesty checks printed as notes: the machine's load in the second before
# the run; for every measurement the share of the machine's CPU used by
# processes that are neither the server nor this script's own load
# generators (another job on the machine lowers every figure), and steal;
# latency spikes; wrk errors; error answers logged by lmapd.
set -euo pipefail
export LC_ALL=C
src=$(cd "$(dirname "$0")/../.." && pwd)
bench_src=$src/tests/bench

quick=0 build=""
for a in "$@"; do
  case $a in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    *) build=$a ;;
  esac
done
build=${build:-$src/build}
LMAP=${LMAP_BIN:-$build/lmap}
LMAPD=${LMAPD_BIN:-$build/lmapd}
LIB=${LMAP_LIBRARY:-$build/client/liblmap.so}
dir=${BENCH_DIR:-/tmp/lmap-bench}
PY=/usr/bin/python3
for b in "$LMAP" "$LMAPD"; do
  [ -x "$b" ] || { echo "run.sh: $b is not an executable (build first, or set LMAP_BIN/LMAPD_BIN)" >&2; exit 1; }
done

if ((quick)); then
  mode=quick secs=2 warm=1 point=1 peer_secs=2 peer_maps=256 import_n=5000
  rounds=2 round_secs=1
  batch_sizes="1 16 256 1024" client_counts="1 4 16" conn_counts="1 16 64"
  suffix=-quick
else
  mode=full secs=5 warm=1 point=2 peer_secs=5 peer_maps=2048 import_n=100000
  rounds=3 round_secs=2
  batch_sizes="1 4 16 64 256 1024" client_counts="1 2 4 8 16 32" conn_counts="1 4 16 64 256"
  suffix=""
fi
conns=64        # row 1
clients=4       # row 2, and the batch-size series
batch=256       # row 2, and the clients series
small_n=10000
big_n=1281167

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
run=$dir/last-$mode
rm -rf "$run"
mkdir -p "$run"
shm=/dev/shm/lmap-bench-$$
: > "$run/raw.jsonl"
: > "$run/notes.txt"

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "${t#0}"; }
t_start=$(now_us)
since() { awk -v a="$1" -v b="$(now_us)" 'BEGIN { printf "%.2f", (b - a) / 1e6 }'; }
say() { printf '[%6ss] %s\n' "$(since "$t_start")" "$*" >&2; }
note() { echo "$*" >> "$run/notes.txt"; say "note: $*"; }
record() { printf '{"tag":"%s","data":%s}\n' "$1" "$2" >> "$run/raw.jsonl"; }
failures=0
failed() { failures=$((failures + 1)); note "FAILED: $*"; }

# ---- processes: each started in its own process group, stopped by PID ----
pids=()
forget() { local keep=() p; for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=("${keep[@]}"); }
alive() { [ -e "/proc/$1" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
stop_proc() { # PID [seconds before SIGKILL]
  local p=$1 t=${2:-10} i
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < t * 10; i++)); do alive "$p" || break; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  forget "$p"
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do alive "$p" || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
  done
  rm -rf "$shm"
}
trap cleanup EXIT
trap 'say "stopped by a signal"; exit 130' INT TERM HUP
set -E
trap 'say "run.sh failed at line $LINENO: $BASH_COMMAND"' ERR

# bounded LIMIT CMD...: runs CMD under timeout (its own process group) in
# the background, so a signal to this script still reaches the trap.
bounded() {
  local limit=$1 p rc=0
  shift
  timeout -k 5 "$limit" "$@" &
  p=$!
  pids+=("$p")
  wait "$p" || rc=$?
  forget "$p"
  return $rc
}

ticks_per_s=$(getconf CLK_TCK)
cpu_ticks() { # PID... -> utime+stime of the processes (all their threads)
  local p s=0
  for p in "$@"; do
    s=$((s + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$s"
}
# CPU accounting around one measurement: cpu_mark PID... before, then
# cpu_end PID... after (never in a subshell) sets CPU_JSON: the server's CPU
# seconds; the share of the machine's busy time (user, nice, system, irq,
# softirq of all cores) that was neither the server nor a process this
# script waited for (wrk, bench_batch, the peer: bash's `times`, written to
# a file because a subshell would see none of them); and the hypervisor's
# steal share. /proc/stat counts sampled ticks, so the foreign share is
# good to about 10% of the machine; above that, another job lowered the
# figure.
machine_cpu() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
children_cpu_s() { awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); s += a[1] * 60 + a[2] } print s }' "$1"; }
CPU_T0="" CPU_M0="" CPU_S0="" CPU_P0=""
cpu_mark() {
  times > "$run/.times0"
  CPU_T0=$(now_us)
  read -r CPU_M0 CPU_S0 < <(machine_cpu)
  CPU_P0=$(cpu_ticks "$@")
}
CPU_JSON=""
cpu_end() {
  local p1 m1 s1 t1
  p1=$(cpu_ticks "$@")
  read -r m1 s1 < <(machine_cpu)
  times > "$run/.times1"
  t1=$(now_us)
  CPU_JSON=$(awk -v p0="$CPU_P0" -v p1="$p1" -v m0="$CPU_M0" -v m1="$m1" -v s0="$CPU_S0" -v s1="$s1" \
      -v c0="$(children_cpu_s "$run/.times0")" -v c1="$(children_cpu_s "$run/.times1")" \
      -v w="$(( t1 - CPU_T0 ))" -v h="$ticks_per_s" -v n="$ncpu" 'BEGIN {
    cap = n * w / 1e6; server = (p1 - p0) / h; other = (m1 - m0) / h - server - (c1 - c0)
    if (other < 0) other = 0
    if (cap <= 0) cap = 1e-9
    printf "\"server_cpu_s\":%.3f,\"client_cpu_s\":%.3f,\"foreign_cpu_pct\":%.1f,\"steal_pct\":%.1f",
      server, c1 - c0, 100 * other / cap, 100 * (s1 - s0) / h / cap }')
}
ncpu=$(nproc)
children() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true; }
rss_sum() { # PID... -> summed Rss and Pss in KiB
  local p r=0 q=0 a b
  for p in "$@"; do
    read -r a b < <(awk '$1 == "Rss:" { r = $2 } $1 == "Pss:" { q = $2 } END { print r + 0, q + 0 }' \
      "/proc/$p/smaps_rollup" 2>/dev/null || echo "0 0")
    r=$((r + a)) q=$((q + b))
  done
  echo "$r $q"
}
free_port() {
  $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- packages and tools ----
say "mode $mode, BENCH_DIR $dir"
"$src/deploy/install-deps.sh" wrk nginx-light gnuplot-nox >&2
have_torch=1
$PY -c 'import torch, torchvision, numpy' 2>/dev/null || {
  have_torch=0
  note "no torch/torchvision/numpy under $PY: the official-path rows and the official-format tar are skipped (apt-get install python3-torch python3-torchvision python3-numpy)"
}
have_gnuplot=1
command -v gnuplot > /dev/null || { have_gnuplot=0; note "no gnuplot: no plot"; }

BB=${BENCH_BATCH_BIN:-}
if [ -z "$BB" ]; then
  for c in "$build/tests/bench/bench_batch" "$build/tests/bench_batch"; do
    [ -x "$c" ] && [ "$c" -nt "$bench_src/bench_batch.c" ] && { BB=$c; break; }
  done
fi
if [ -z "$BB" ]; then
  [ -f "$LIB" ] || { echo "run.sh: $LIB not found (set LMAP_LIBRARY or BENCH_BATCH_BIN)" >&2; exit 1; }
  BB=$run/bench_batch
  cc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -I"$src/include" \
     "$bench_src/bench_batch.c" "$LIB" -Wl,-rpath,"$(dirname "$LIB")" -lpthread -lm -o "$BB"
fi

# The machine before anything starts: another job's load lowers every figure.
read -r m0 _ < <(machine_cpu)
sleep 1
read -r m1 _ < <(machine_cpu)
busy_before=$(awk -v a="$m0" -v b="$m1" -v h="$ticks_per_s" -v n="$ncpu" 'BEGIN { printf "%.0f", 100 * (b - a) / h / n }')
record machine.before "{\"busy_pct\":$busy_before,\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
((busy_before < 10)) || note "the machine was ${busy_before}% busy (all cores) in the second before the run, load average $(cut -d' ' -f1-3 /proc/loadavg): other jobs share the cores, every figure is low"

# ---- stores ----
records_of() { "$LMAP" info "$1" 2>/dev/null | awk '$1 == "record_count" { print $2 }'; }
# Stores written before the metadata named the level were all level 1.
level_of() { "$LMAP" info "$1" 2>/dev/null | awk '$1 == "zstd_level" { l = $2 } END { print l ? l : 1 }'; }
# The served stores are written at --level 1 so that a first run, which
# makes the 1,281,167-record one, stays within 5 minutes (the default level
# 15 encodes about 5x slower); a level-15 record decodes about 5% slower
# (the level row below measures both).
serve_level=1
ensure_store() { # PATH N -> makes it unless it holds N records
  local t
  if [ "$(records_of "$1")" != "$2" ] || [ "$(level_of "$1")" != $serve_level ]; then
    say "making $1 ($2 records, lmap synth --level $serve_level)"
    t=$(now_us)
    bounded 1800 "$LMAP" synth -o "$1" --images "$2" --level $serve_level --force --no-progress >&2
    note "made $(basename "$1") with lmap synth in $(since "$t") s (kept in BENCH_DIR for later runs)"
  fi
  if [ ! -s "$1.ids" ] || [ "$1" -nt "$1.ids" ]; then
    "$LMAP" ids "$1" > "$1.ids.tmp" && mv "$1.ids.tmp" "$1.ids"
  fi
}
small=$dir/synth-$small_n.lmap
ensure_store "$small" $small_n
main_store=$small main_n=$small_n have_big=0
if ((!quick)); then
  big=$dir/synth-$big_n.lmap
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "$(records_of "$big")" = "$big_n" ] || ((free_kib >= 6 * 1024 * 1024)); then
    ensure_store "$big" $big_n
    main_store=$big main_n=$big_n have_big=1
  else
    note "scale row skipped: $((free_kib / 1024 / 1024)) GB free in $dir, the $big_n-record store needs about 2.5 GB and this check asks for 6; the main rows use the $small_n-record store"
  fi
fi
# wrk's Lua loads its ids per thread: a uniform sample of the whole store
# (the same sample in every run: shuf reads its randomness from a file;
# 1,281,167 lines take 2-4 MiB of it).
wrk_ids=$run/wrk-ids.txt
shuf_seed=$run/shuf-seed
$PY -c 'import random, sys; random.seed(7); sys.stdout.buffer.write(random.randbytes(1 << 24))' > "$shuf_seed"
shuf -n 100000 --random-source="$shuf_seed" "$main_store.ids" > "$wrk_ids"
((main_n <= 100000)) || note "wrk draws its ids from a uniform sample of 100,000 of the store's $main_n (its Lua loads them per thread); bench_batch and the official peer draw from all"
t=$(now_us)
cat "$main_store" > /dev/null
note "store $(basename "$main_store") ($(stat -c %s "$main_store") bytes) read into the page cache in $(since "$t") s before serving it"

# ---- servers ----
LPID="" LPORT=""
start_lmapd() { # STORE THREADS TAG [LMAPD ARGS...]
  local log=$run/lmapd-$3.log i store=$1 threads=$2
  shift 3
  setsid "$LMAPD" --store "$store" --listen 127.0.0.1:0 --threads "$threads" --grace 5 --max-per-ip 0 "$@" 2> "$log" &
  LPID=$!
  pids+=("$LPID")
  for ((i = 0; i < 200; i++)); do
    grep -qs '"event":"listening"' "$log" && break
    alive "$LPID" || { cat "$log" >&2; echo "run.sh: lmapd did not start" >&2; exit 1; }
    sleep 0.05
  done
  LPORT=$(grep '"event":"listening"' "$log" | grep -o '"port":[0-9]*' | head -1 | cut -d: -f2)
  [ -n "$LPORT" ] || { echo "run.sh: lmapd logged no port" >&2; exit 1; }
}
stop_lmapd() { # TAG (/readyz's 503s while a resident arena is built are expected)
  stop_proc "$LPID" 10
  local errors
  errors=$(grep '"event":"request"' "$run/lmapd-$1.log" | grep -v '"path":"/readyz","status":503' || true)
  if [ -n "$errors" ]; then
    failed "lmapd ($1) logged error answers: $(wc -l <<< "$errors"), first: $(head -1 <<< "$errors")"
  fi
}

# wrk_run TAG URL CONNS SECONDS FORMAT PREFIX SERVER_PIDS...: one wrk load,
# recorded with the server's CPU ticks over it.
wrk_run() {
  local tag=$1 url=$2 c=$3 s=$4 fmt=$5 prefix=$6
  shift 6
  local out=$run/wrk-$tag.txt th=$((c < 2 ? c : 2)) js
  cpu_mark "$@"
  if ! bounded $(($(printf '%.0f' "$s") + 60)) env IDS="$wrk_ids" FORMAT="$fmt" PREFIX="$prefix" SEED=7 \
      wrk -t"$th" -c"$c" -d"${s}s" --timeout 5s -s "$bench_src/labels.lua" "$url" > "$out" 2>&1; then
    failed "wrk $tag: $(tail -3 "$out" | tr '\n' ' ')"
    return 0
  fi
  cpu_end "$@"
  js=$(sed -n 's/^WRKJSON //p' "$out")
  [ -n "$js" ] || { failed "wrk $tag printed no result: $(tail -3 "$out" | tr '\n' ' ')"; return 0; }
  record "$tag" "{\"tool\":\"wrk\",\"connections\":$c,\"threads\":$th,\"seconds\":$s,\"format\":\"$fmt\",$CPU_JSON,\"wrk\":$js}"
}

# batch_run TAG CLIENTS BATCH SECONDS [QUERIES [ANSWERS]]: one bench_batch
# load (QUERIES: binary, liblmap's default, or json; ANSWERS: sparse,
# liblmap's default, or npy).
batch_run() {
  local tag=$1 out=$run/batch-$1.txt
  cpu_mark "$LPID"
  if ! bounded $(($(printf '%.0f' "$4") + 60)) "$BB" --url "http://127.0.0.1:$LPORT" --ids "$main_ids" \
      --clients "$2" --batch "$3" --seconds "$4" --max-requests 1000000 --queries "${5:-binary}" \
      --answers "${6:-sparse}" \
      > "$out" 2> "$out.err"; then
    failed "bench_batch $tag: $(tail -3 "$out.err" | tr '\n' ' ')"
    return 0
  fi
  cpu_end "$LPID"
  record "$tag" "{$CPU_JSON,\"result\":$(tail -1 "$out")}"
}

# footprint_start TAG STORE / footprint_end TAG: samples lmapd's memory
# beyond the store once a second in the background (a sample costs tens of
# ms of kernel time on a big store, so only during the plot series, never
# during a headline measurement), and records the largest.
FPID=""
footprint_start() {
  setsid "$bench_src/footprint.sh" "$LPID" "$2" 900 1 > "$run/fp-$1.txt" 2>&1 &
  FPID=$!
  pids+=("$FPID")
}
footprint_end() {
  kill -TERM -- "-$FPID" 2>/dev/null || true
  wait "$FPID" 2>/dev/null || true
  forget "$FPID"
  local r sr o
  read -r r sr o < "$run/fp-$1.txt" || true
  if [ -n "${o:-}" ]; then
    record "fp.$1" "{\"rss_kib\":$r,\"store_rss_kib\":$sr,\"other_kib\":$o}"
  else
    note "no memory sample of lmapd during $1: $(head -c 300 "$run/fp-$1.txt")"
  fi
}

# ---- nginx, row 1's peer: the same URLs, a static file of lmap's mean
# answer size each (written after lmapd's first round of each format) ----
start_nginx() { # sets NPID, nurl, nginx_pids; returns 1 if nginx did not start
  local attempt i ok user_line
  mkdir -p "$run/nginx-tmp" "$run/www"
  user_line=""
  [ "$(id -u)" -eq 0 ] && user_line="user root root;"   # workers read $run/www as the caller does
  NPID="" NPORT=""
  for attempt in 1 2 3; do
    NPORT=$(free_port)
    cat > "$run/nginx.conf" <<EOT
  $user_line
  worker_processes 2;
  daemon off;
  master_process on;
  pid $run/nginx.pid;
  error_log $run/nginx.err;
  events { worker_connections 1024; }
  http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_body_temp_path $run/nginx-tmp; proxy_temp_path $run/nginx-tmp;
    fastcgi_temp_path $run/nginx-tmp; uwsgi_temp_path $run/nginx-tmp; scgi_temp_path $run/nginx-tmp;
    server {
      listen 127.0.0.1:$NPORT;
      root $run/www;
      default_type application/json;
      location /sparse/ { try_files /sparse.json =404; }
      location /dense/ { try_files /dense.json =404; }
    }
  }
EOT
    setsid nginx -p "$run" -c "$run/nginx.conf" -e "$run/nginx.err" 2>> "$run/nginx.err" &
    NPID=$!
    pids+=("$NPID")
    ok=0
    for ((i = 0; i < 50; i++)); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NPORT/sparse/x" 2>/dev/null)" = 200 ] && { ok=1; break; }
      alive "$NPID" || break
      sleep 0.1
    done
    ((ok)) && break
    stop_proc "$NPID" 5
    NPID=""
  done
  [ -n "$NPID" ] || return 1
  nurl=http://127.0.0.1:$NPORT
  nginx_pids=("$NPID" $(children "$NPID"))
}

# ---- lmapd on the main store, 2 threads: rows 1, 2, 4 and the plot ----
main_ids=$main_store.ids
start_lmapd "$main_store" 2 main
url=http://127.0.0.1:$LPORT
say "lmapd on $(basename "$main_store"), port $LPORT, 2 threads"
record fp.idle "$("$bench_src/footprint.sh" "$LPID" "$main_store" | awk '{ printf "{\"rss_kib\":%d,\"store_rss_kib\":%d,\"other_kib\":%d}", $1, $2, $3 }')"
wrk_run warmup "$url" $conns "$warm" sparse "" "$LPID"
# Row 1 alternates lmapd and nginx in short rounds and reports medians: a
# burst of outside load then hits one round of each, not one server's
# whole measurement. nginx idles (no CPU) while lmapd is measured.
for fmt in sparse dense; do # placeholders until lmapd's answer sizes are known
  mkdir -p "$run/www" && printf '{}' > "$run/www/$fmt.json"
done
have_nginx=0
if start_nginx; then
  have_nginx=1
  wrk_run warmup-nginx "$nurl" $conns "$warm" sparse /sparse "${nginx_pids[@]}"
else
  failed "nginx did not start: $(tail -3 "$run/nginx.err" | tr '\n' ' ')"
fi
for fmt in sparse dense; do
  say "row 1: single GET, $fmt, lmapd and nginx, $rounds rounds of $round_secs s"
  for ((r = 1; r <= rounds; r++)); do
    wrk_run "single.$fmt.lmap.$r" "$url" $conns $round_secs $fmt "" "$LPID"
    if ((r == 1)); then
      # nginx's file: lmapd's mean body size over the first round.
      id=$(head -1 "$wrk_ids")
      curl -s -D "$run/hdr-$fmt" -o "$run/body-$fmt" "$url/v1/labels/$id?box=0.1,0.1,0.9,0.9&format=$fmt"
      hdr=$(stat -c %s "$run/hdr-$fmt")
      size=$(grep "\"single.$fmt.lmap.1\"" "$run/raw.jsonl" | $PY -c '
import json, sys
d = json.loads(sys.stdin.readline())["data"]["wrk"]
print(max(1, round(d["bytes"] / max(1, d["requests"]) - int(sys.argv[1]))))' "$hdr" 2>/dev/null || stat -c %s "$run/body-$fmt")
      b=$(stat -c %s "$run/body-$fmt")
      { head -c "$size" "$run/body-$fmt"; if ((size > b)); then printf '%*s' $((size - b)) ''; fi; } > "$run/www/$fmt.json.tmp"
      mv "$run/www/$fmt.json.tmp" "$run/www/$fmt.json"
      record "body.$fmt" "{\"mean_body_bytes\":$size,\"lmapd_header_bytes\":$hdr}"
    fi
    ((have_nginx)) || continue
    if ((r == 1)); then
      ( sleep "$(awk -v s="$round_secs" 'BEGIN { print s / 2 }')"; rss_sum "${nginx_pids[@]}" > "$run/fp-nginx-$fmt.txt" ) &
      sp=$!
      pids+=("$sp")
    fi
    wrk_run "single.$fmt.nginx.$r" "$nurl" $conns $round_secs $fmt "/$fmt" "${nginx_pids[@]}"
    if ((r == 1)); then
      wait "$sp" || true
      forget "$sp"
      read -r rk qk < "$run/fp-nginx-$fmt.txt" && record "fp.nginx-$fmt" "{\"rss_kib\":$rk,\"pss_kib\":$qk,\"processes\":${#nginx_pids[@]}}"
    fi
  done
done
((have_nginx)) && stop_proc "$NPID" 10

# GET-only memory first: a batch leaves its larger buffers in the heap.
say "plot series: wrk connections ($conn_counts), lmapd memory sampled"
footprint_start get "$main_store"
for c in $conn_counts; do wrk_run "series.conns.$c" "$url" "$c" $point sparse "" "$LPID"; done
footprint_end get

say "row 2: batch $batch, $clients clients (binary queries, then JSON; sparse answers, then .npy)"
batch_run batch.lmap $clients $batch $secs
batch_run batch.lmap.json $clients $batch $secs json
batch_run batch.lmap.npy $clients $batch $secs binary npy

if ((have_torch)); then
  say "row 2 peer: official path, 2 workers ($peer_maps maps to $shm)"
  cpu_mark "$LPID"
  if bounded $((peer_secs + 240)) $PY "$bench_src/official_peer.py" --url "$url" --ids "$main_ids" \
      --dir "$shm" --maps $peer_maps --batch $batch --workers 2 --seconds $peer_secs \
      > "$run/official.txt" 2> "$run/official.err"; then
    cpu_end "$LPID"
    record batch.official "$(tail -1 "$run/official.txt" | sed 's/}$//'), $CPU_JSON}"
  else
    failed "official_peer.py: $(tail -3 "$run/official.err" | tr '\n' ' ')"
  fi
  rm -rf "$shm"
fi

say "plot series: batch sizes ($batch_sizes), clients ($client_counts), lmapd memory sampled"
footprint_start batch "$main_store"
for b in $batch_sizes; do batch_run "series.batch.$b" $clients "$b" $point; done
for k in $client_counts; do batch_run "series.clients.$k" "$k" $batch $point; done
footprint_end batch
stop_lmapd main

# ---- rows 6-8: lmapd --resident on the main store ----
say "rows 6-8: lmapd --resident on $(basename "$main_store")"
t=$(now_us)
start_lmapd "$main_store" 2 resident --resident
url=http://127.0.0.1:$LPORT
ready=0
for ((i = 0; i < 1800; i++)); do # 180 s at most
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" 2>/dev/null)" = 200 ] && { ready=1; break; }
  alive "$LPID" || break
  sleep 0.1
done
if ((ready)); then
  record resident.start "{\"ready_s\":$(since "$t"),\"event\":$(grep -m1 '"event":"resident_ready"' "$run/lmapd-resident.log")}"
  wrk_run warmup-resident "$url" $conns "$warm" sparse "" "$LPID"
  have_nginx=0
  start_nginx && have_nginx=1
  say "row 6: single GET sparse, resident lmapd and nginx, $rounds rounds of $round_secs s"
  for ((r = 1; r <= rounds; r++)); do
    wrk_run "resident.single.sparse.lmap.$r" "$url" $conns $round_secs sparse "" "$LPID"
    ((have_nginx)) && wrk_run "resident.single.sparse.nginx.$r" "$nurl" $conns $round_secs sparse /sparse "${nginx_pids[@]}"
  done
  ((have_nginx)) && stop_proc "$NPID" 10
  say "row 7: resident batch $batch, $clients clients (binary queries, then JSON; sparse answers, then .npy)"
  batch_run resident.batch $clients $batch $secs
  batch_run resident.batch.json $clients $batch $secs json
  batch_run resident.batch.npy $clients $batch $secs binary npy
  record fp.resident "$("$bench_src/footprint.sh" "$LPID" "$main_store" | awk '{ printf "{\"rss_kib\":%d,\"store_rss_kib\":%d,\"other_kib\":%d}", $1, $2, $3 }')"
else
  failed "lmapd --resident was not ready within 180 s: $(tail -2 "$run/lmapd-resident.log" | tr '\n' ' ')"
fi
stop_lmapd resident

# ---- row 5: 1 server thread; the 10,000-record store ----
say "row 5: lmapd with 1 thread"
start_lmapd "$main_store" 1 threads1
url=http://127.0.0.1:$LPORT
wrk_run warmup-t1 "$url" $conns "$warm" sparse "" "$LPID"
wrk_run threads1.single.sparse "$url" $conns $secs sparse "" "$LPID"
batch_run threads1.batch $clients $batch $secs
stop_lmapd threads1
if ((have_big)); then
  say "row 5: lmapd on the $small_n-record store"
  main_ids=$small.ids
  shuf -n 100000 --random-source="$shuf_seed" "$small.ids" > "$wrk_ids"
  start_lmapd "$small" 2 small
  url=http://127.0.0.1:$LPORT
  wrk_run warmup-small "$url" $conns "$warm" sparse "" "$LPID"
  wrk_run small.single.sparse "$url" $conns $secs sparse "" "$LPID"
  wrk_run small.single.dense "$url" $conns $secs dense "" "$LPID"
  batch_run small.batch $clients $batch $secs
  stop_lmapd small
fi

# ---- row 9: the trainer's own figure, a PyTorch DataLoader's images/s ----
if ((have_torch)); then
  say "row 9: DataLoader images/s: hard labels, lmap soft labels (lmapd --resident), the official .pt path"
  dl_opts=()
  ((quick)) && dl_opts=(--quick)
  if bounded $((quick ? 180 : 480)) $PY "$bench_src/bench_dataloader.py" "${dl_opts[@]}" --resident \
      --lmap "$LMAP" --lmapd "$LMAPD" --library "$LIB" --dir "$dir/dataloader" \
      --json "$run/dataloader.json" > "$run/dataloader.txt" 2> "$run/dataloader.err"; then
    record dataloader "$(cat "$run/dataloader.json")"
  else
    failed "bench_dataloader.py: $(tail -3 "$run/dataloader.err" | tr '\n' ' ')"
  fi
fi

# ---- row 3: import of an official-format tar; store bytes per record ----
tar=$dir/official-$import_n.tar
if [ ! -s "$tar" ] && ((have_torch)); then
  say "making $tar ($import_n official-format .pt files)"
  t=$(now_us)
  bounded 1800 $PY "$bench_src/make_official_tar.py" --images $import_n --seed 7 "$tar.tmp" 2> "$run/make_tar.err" &&
    mv "$tar.tmp" "$tar" || failed "make_official_tar.py: $(tail -2 "$run/make_tar.err" | tr '\n' ' ')"
  note "made $(basename "$tar") in $(since "$t") s (kept in BENCH_DIR for later runs)"
fi
if [ -s "$tar" ]; then
  # f16 and f32 at the default level, and f16 at --level 1 (the fast
  # option): its speed, its size, and how fast its records decode.
  for enc in f16 f32 f16-l1; do
    say "row 3: lmap import, $enc"
    case $enc in f16-l1) level_opt="--level 1" ;; *) level_opt="" ;; esac
    t=$(now_us)
    # shellcheck disable=SC2086 # level_opt is empty or two words
    if bounded 900 "$LMAP" import "$tar" -o "$run/import-$enc.lmap" --encoding ${enc%-l1} \
        $level_opt --force --no-progress \
        > "$run/import-$enc.txt" 2>&1; then
      wall=$(since "$t")
      n=$(records_of "$run/import-$enc.lmap")
      t=$(now_us)
      bounded 900 "$LMAP" verify "$run/import-$enc.lmap" > /dev/null || failed "lmap verify of the $enc import"
      verify_s=$(since "$t")
      record "store.$enc" "{\"records\":${n:-0},\"file_bytes\":$(stat -c %s "$run/import-$enc.lmap"),\"wall_s\":$wall,\"verify_s\":$verify_s,\"log\":$(tail -1 "$run/import-$enc.txt" | $PY -c 'import json, sys; print(json.dumps(sys.stdin.read().strip()))')}"
    else
      failed "lmap import $enc: $(tail -2 "$run/import-$enc.txt" | tr '\n' ' ')"
    fi
    rm -f "$run/import-$enc.lmap" "$run/import-$enc.lmap-lock"
  done
  say "row 3 peer: tar -x of the same tar"
  mkdir -p "$run/untar"
  t=$(now_us)
  if bounded 900 tar -xf "$tar" -C "$run/untar"; then
    wall=$(since "$t")
    files=$(find "$run/untar" -type f | wc -l)
    record store.untar "{\"files\":$files,\"wall_s\":$wall,\"tar_bytes\":$(stat -c %s "$tar")}"
  else
    failed "tar -xf $tar"
  fi
  rm -rf "$run/untar"
fi
record store.synth "{\"records\":$main_n,\"file_bytes\":$(stat -c %s "$main_store")}"
((have_big)) && record store.synth_small "{\"records\":$small_n,\"file_bytes\":$(stat -c %s "$small")}"

# ---- the table, results.json, the plot ----
total=$(since "$t_start")
results=$dir/results$suffix.json
plot=$dir/plot$suffix.svg
MODE=$mode QUICK=$quick SECS=$secs CONNS=$conns CLIENTS=$clients BATCH=$batch \
MAIN_N=$main_n SMALL_N=$small_n HAVE_BIG=$have_big RUN=$run RESULTS=$results PLOT=$plot \
TOTAL=$total LMAP=$LMAP LMAPD=$LMAPD LIB=$LIB BB=$BB SRC=$src PEER_MAPS=$peer_maps \
IMPORT_N=$import_n MAX_CONNS=${conn_counts##* } MAX_BATCH=${batch_sizes##* } MAX_CLIENTS=${client_counts##* } \
VERSION="$("$LMAP" --version 2>&1 | head -1)" \
COMMIT="$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
$PY - <<'PYEOF'
import datetime, json, os, platform, sys

E = os.environ
raw = [json.loads(l) for l in open(os.path.join(E["RUN"], "raw.jsonl")) if l.strip()]
by = {r["tag"]: r["data"] for r in raw}
notes = [l.rstrip("\n") for l in open(os.path.join(E["RUN"], "notes.txt")) if l.strip()]
quick = E["QUICK"] == "1"
main_n, small_n = int(E["MAIN_N"]), int(E["SMALL_N"])

def get(tag, *path):
    d = by.get(tag)
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d

def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2

def wrk(tag, what):
    if tag not in by and tag + ".1" in by:  # rounds: their median
        r = 1
        vals = []
        while tag + ".%d" % r in by:
            vals.append(wrk(tag + ".%d" % r, what))
            r += 1
        return median(vals)
    w = get(tag, "wrk")
    if not w:
        return None
    if what == "rps":
        return w["requests"] / (w["duration_us"] / 1e6)
    if what == "cpu_us":  # server CPU per request
        return by[tag]["server_cpu_s"] * 1e6 / max(1, w["requests"])
    return w["lat_us"][what] / 1e3  # ms

def batch(tag, what):
    r = get(tag, "result")
    if not r:
        return None
    if what == "cpu_us":  # server + client CPU per label
        return (by[tag]["server_cpu_s"] + r["cpu_s"]) * 1e6 / max(1, r["labels"])
    if what == "server_us":  # lmapd's CPU per label
        return by[tag]["server_cpu_s"] * 1e6 / max(1, r["labels"])
    if what == "client_us":  # the client's (bench_batch's) CPU per label
        return r["cpu_s"] * 1e6 / max(1, r["labels"])
    return r[what]

def official(what):
    o = by.get("batch.official")
    if not o:
        return None
    if what == "cpu_us":
        return o["cpu_s"] * 1e6 / max(1, o["labels"])
    return o[what]

rows = []
def row(key, label, lmap, peer, unit, goal="", peer_is=""):
    ratio = lmap / peer if isinstance(lmap, (int, float)) and isinstance(peer, (int, float)) and peer else None
    rows.append({"row": key, "label": label, "lmap": lmap, "peer": peer, "ratio": ratio,
                 "unit": unit, "goal": goal, "peer_is": peer_is})

def mib(kib):
    return None if kib is None else kib / 1024.0

def fmt_ms(v):
    return "n/a" if v is None else "%.2f" % v

store_desc = "%s records" % format(main_n, ",")
for fmt, goal in (("sparse", ">= 0.8x"), ("dense", ">= 0.5x")):
    L, N = "single.%s.lmap" % fmt, "single.%s.nginx" % fmt
    size = get("body." + fmt, "mean_body_bytes")
    peer = "nginx, static %s B file" % size
    row("single.%s.rps" % fmt, "1 single GET %s: req/s" % fmt, wrk(L, "rps"), wrk(N, "rps"), "req/s", goal, peer)
    row("single.%s.p50" % fmt, "1 single GET %s: p50" % fmt, wrk(L, "p50"), wrk(N, "p50"), "ms", "", peer)
    row("single.%s.p99" % fmt, "1 single GET %s: p99" % fmt, wrk(L, "p99"), wrk(N, "p99"), "ms", "<= 2 ms", peer)
    row("single.%s.cpu" % fmt, "1 single GET %s: server CPU/req" % fmt, wrk(L, "cpu_us"), wrk(N, "cpu_us"), "us", "", peer)
peer = "official path, 2 workers"
row("batch.labels_per_s", "2 batch %s, %s clients: labels/s" % (E["BATCH"], E["CLIENTS"]),
    batch("batch.lmap", "labels_per_s"), official("labels_per_s"), "labels/s", ">= 100x, >= 250,000", peer)
row("batch.p99", "2 batch: p99 per batch", batch("batch.lmap", "p99_ms"), official("p99_ms"), "ms", "", peer)
row("batch.cpu", "2 batch: CPU/label (server+client)", batch("batch.lmap", "cpu_us"), official("cpu_us"), "us", "", peer)
row("batch.server_cpu", "2 batch: lmapd CPU/label", batch("batch.lmap", "server_us"), official("cpu_us"), "us", "", peer)
tar_b = get("store.untar", "tar_bytes")
tar_files = get("store.untar", "files")
tar_per = tar_b / tar_files if tar_b and tar_files else None
def enc_label(enc):
    return "f16 --level 1" if enc == "f16-l1" else enc
for enc in ("f16", "f32", "f16-l1"):
    s = by.get("store." + enc)
    row("store.%s.bytes" % enc, "3 store %s: bytes/record" % enc_label(enc),
        s["file_bytes"] / s["records"] if s and s["records"] else None, tar_per, "B",
        "<= 2,000" if enc == "f16" else "", "official .pt in its tar (release: 10,240)")
for enc in ("f16", "f32", "f16-l1"):
    s = by.get("store." + enc)
    row("import.%s.rate" % enc, "3 import %s from tar: records/s" % enc_label(enc),
        s["records"] / s["wall_s"] if s and s["wall_s"] else None,
        tar_files / get("store.untar", "wall_s") if tar_files else None, "records/s", "",
        "tar -x of the same tar")
def verify_us(enc):
    s = by.get("store." + enc)
    return s["verify_s"] * 1e6 / s["records"] if s and s.get("verify_s") and s["records"] else None
row("store.f16.decode", "3 lmap verify f16 (decodes all): us/record", verify_us("f16"), verify_us("f16-l1"), "us", "",
    "the same maps written at --level 1")
s = by.get("store.synth")
row("store.synth.bytes", "3 store f16 --level 1, lmap synth (%s): bytes/record" % store_desc,
    s["file_bytes"] / s["records"] if s else None, 10240, "B", "<= 2,000", "official release 10,240")
fp_nginx = max([get("fp.nginx-" + f, "rss_kib") or 0 for f in ("sparse", "dense")]) or None
row("footprint.get", "4 RSS beyond store, GET load (1-%s conns)" % E["MAX_CONNS"], mib(get("fp.get", "other_kib")),
    mib(fp_nginx), "MiB", "<= 64 MiB", "nginx RSS (all processes, 64 conns)")
row("footprint.batch", "4 RSS beyond store, batch load (B<=%s, K<=%s)" % (E["MAX_BATCH"], E["MAX_CLIENTS"]),
    mib(get("fp.batch", "other_kib")), mib(official("pss_kib")), "MiB", "<= 64 MiB",
    "official path PSS (main + workers)")
if E["HAVE_BIG"] == "1":
    peer = "same lmapd, %s-record store" % format(small_n, ",")
    lab = "5 scale %s vs %s: " % (format(main_n, ","), format(small_n, ","))
    row("scale.single.rps", lab + "GET sparse req/s", wrk("single.sparse.lmap", "rps"), wrk("small.single.sparse", "rps"), "req/s", "~1x", peer)
    row("scale.single.cpu", lab + "GET sparse CPU/req", wrk("single.sparse.lmap", "cpu_us"), wrk("small.single.sparse", "cpu_us"), "us", "~1x", peer)
    row("scale.dense.rps", lab + "GET dense req/s", wrk("single.dense.lmap", "rps"), wrk("small.single.dense", "rps"), "req/s", "~1x", peer)
    row("scale.batch.rate", lab + "batch labels/s", batch("batch.lmap", "labels_per_s"), batch("small.batch", "labels_per_s"), "labels/s", "~1x", peer)
    row("scale.batch.cpu", lab + "batch CPU/label", batch("batch.lmap", "cpu_us"), batch("small.batch", "cpu_us"), "us", "~1x", peer)
else:
    peer = "n/a: quick run, %s records only" % format(small_n, ",") if quick else "n/a: no large store"
    row("scale.single.rps", "5 scale %s only: GET sparse req/s" % format(main_n, ","), wrk("single.sparse.lmap", "rps"), None, "req/s", "", peer)
    row("scale.batch.rate", "5 scale %s only: batch labels/s" % format(main_n, ","), batch("batch.lmap", "labels_per_s"), None, "labels/s", "", peer)
peer = "the same batches as JSON"
row("batch.json.rate", "2 batch: binary queries vs JSON body, labels/s", batch("batch.lmap", "labels_per_s"),
    batch("batch.lmap.json", "labels_per_s"), "labels/s", "", peer)
row("batch.json.server_cpu", "2 batch: lmapd CPU/label, binary vs JSON", batch("batch.lmap", "server_us"),
    batch("batch.lmap.json", "server_us"), "us", "", peer)
peer = "the same batches answered as .npy"
row("batch.npy.rate", "2 batch: sparse binary vs .npy answers, labels/s", batch("batch.lmap", "labels_per_s"),
    batch("batch.lmap.npy", "labels_per_s"), "labels/s", "", peer)
row("batch.npy.server_cpu", "2 batch: lmapd CPU/label, sparse vs .npy answers", batch("batch.lmap", "server_us"),
    batch("batch.lmap.npy", "server_us"), "us", "", peer)
row("batch.npy.client_cpu", "2 batch: client CPU/label, sparse vs .npy answers", batch("batch.lmap", "client_us"),
    batch("batch.lmap.npy", "client_us"), "us", "", peer)
start = by.get("resident.start") or {}
arena = (start.get("event") or {})
peer = "nginx, static %s B file" % get("body.sparse", "mean_body_bytes")
L, N = "resident.single.sparse.lmap", "resident.single.sparse.nginx"
row("resident.single.rps", "6 resident: single GET sparse req/s", wrk(L, "rps"), wrk(N, "rps"), "req/s", ">= 1.0x", peer)
row("resident.single.p99", "6 resident: single GET sparse p50 / p99",
    "%s / %s" % (fmt_ms(wrk(L, "p50")), fmt_ms(wrk(L, "p99"))),
    "%s / %s" % (fmt_ms(wrk(N, "p50")), fmt_ms(wrk(N, "p99"))), "ms", "", peer)
row("resident.single.cpu", "6 resident: single GET sparse server CPU/req", wrk(L, "cpu_us"), wrk(N, "cpu_us"), "us", "", peer)
row("resident.batch.rate", "7 resident: batch %s, %s clients, labels/s" % (E["BATCH"], E["CLIENTS"]),
    batch("resident.batch", "labels_per_s"), official("labels_per_s"), "labels/s", ">= 100x, >= 250,000",
    "official path, 2 workers")
row("resident.batch.p99", "7 resident: batch p99", batch("resident.batch", "p99_ms"), official("p99_ms"), "ms", "",
    "official path, 2 workers")
row("resident.batch.cpu", "7 resident: batch CPU/label (server+client)", batch("resident.batch", "cpu_us"),
    official("cpu_us"), "us", "", "official path, 2 workers")
row("resident.batch.vs_mapped", "7 resident vs default mode: batch labels/s", batch("resident.batch", "labels_per_s"),
    batch("batch.lmap", "labels_per_s"), "labels/s", "", "default mode (mapped, decode per request)")
row("resident.batch.server_cpu", "7 resident vs default mode: lmapd CPU/label", batch("resident.batch", "server_us"),
    batch("batch.lmap", "server_us"), "us", "", "default mode (mapped, decode per request)")
row("resident.batch.json", "7 resident: batch labels/s, binary vs JSON queries", batch("resident.batch", "labels_per_s"),
    batch("resident.batch.json", "labels_per_s"), "labels/s", "", "the same batches as JSON")
peer = "the same batches answered as .npy"
row("resident.batch.npy", "7 resident: batch labels/s, sparse binary vs .npy answers",
    batch("resident.batch", "labels_per_s"), batch("resident.batch.npy", "labels_per_s"), "labels/s", "", peer)
row("resident.batch.npy.server_cpu", "7 resident: lmapd CPU/label, sparse vs .npy answers", batch("resident.batch", "server_us"),
    batch("resident.batch.npy", "server_us"), "us", "", peer)
row("resident.batch.npy.client_cpu", "7 resident: client CPU/label, sparse vs .npy answers", batch("resident.batch", "client_us"),
    batch("resident.batch.npy", "client_us"), "us", "", peer)
mapped_rss = get("fp.batch", "rss_kib")
arena_kib = arena.get("arena_bytes", 0) / 1024.0 if arena.get("arena_bytes") else None
row("resident.rss", "8 resident: RSS after batch load, vs arena + default mode's RSS",
    mib(get("fp.resident", "rss_kib")), mib(arena_kib + mapped_rss) if arena_kib and mapped_rss else None,
    "MiB", "<= 1.1x", "arena %.0f MiB + default mode %.0f MiB" % (mib(arena_kib or 0), mib(mapped_rss or 0)))
row("resident.start", "8 resident start: s to ready, %s records" % format(main_n, ","), start.get("ready_s"),
    arena.get("build_seconds"), "s", "<= 20 s", "of which the arena's build (%s threads)" % arena.get("build_threads"))
dl = by.get("dataloader") or {}
t1 = dl.get("table1") or {}
def dl_rate(mode):
    return (t1.get(mode) or {}).get("images_per_s")
peer = "hard labels only, same DataLoader"
row("dataloader.hard", "9 DataLoader (2 workers, batch 256): hard labels, images/s", dl_rate("hard"), dl_rate("hard"),
    "images/s", "", peer)
row("dataloader.lmap", "9 DataLoader: lmap soft labels (lmap.torch, lmapd --resident), images/s", dl_rate("lmap"),
    dl_rate("hard"), "images/s", "cost <= 2%", peer)
row("dataloader.official", "9 DataLoader: official .pt path in the workers, images/s", dl_rate("official"),
    dl_rate("hard"), "images/s", "", peer)
for mode in ("lmap", "official"):
    m = t1.get(mode) or {}
    row("dataloader.%s.cpu" % mode, "9 DataLoader %s: CPU per image, all processes" % mode,
        m.get("cpu_ms_per_image"), (t1.get("hard") or {}).get("cpu_ms_per_image"), "ms", "", peer)
for r in dl.get("table2") or []:
    if r.get("from_table1"):
        continue
    name = "hard" if r["mode"] == "hard" else "lmap, lmapd --threads %d" % r["lmapd_threads"]
    row("dataloader.t2.%s.%d" % (name.replace(" ", "_"), r["trainers"]),
        "9 DataLoader x%d trainers, %s: images/s (summed)" % (r["trainers"], name), r["images_per_s"], None,
        "images/s", "", "")
peer = "same lmapd, 2 threads"
row("threads.single.rps", "5 threads 1 vs 2: GET sparse req/s", wrk("threads1.single.sparse", "rps"), wrk("single.sparse.lmap", "rps"), "req/s", "", peer)
row("threads.batch.rate", "5 threads 1 vs 2: batch labels/s", batch("threads1.batch", "labels_per_s"), batch("batch.lmap", "labels_per_s"), "labels/s", "", peer)

# Errors and oddities the reader should see next to the figures.
for tag, d in sorted(by.items()):
    w = d.get("wrk") if isinstance(d, dict) else None
    if w:
        e = w["errors"]
        if any(e.values()):
            notes.append("wrk %s: errors %s" % (tag, json.dumps(e)))
        if w["lat_us"]["max"] > 100000 and not tag.startswith("warmup"):
            notes.append("wrk %s: max latency %.0f ms (p99 %.1f ms)" % (tag, w["lat_us"]["max"] / 1e3, w["lat_us"]["p99"] / 1e3))
    if isinstance(d, dict) and not tag.startswith("warmup"):
        if d.get("foreign_cpu_pct", 0) > 15:
            notes.append("%s: other processes used %.0f%% of the machine's CPU during the measurement: the figure is low"
                         % (tag, d["foreign_cpu_pct"]))
        if d.get("steal_pct", 0) > 5:
            notes.append("%s: the hypervisor took %.0f%% of the CPU (steal)" % (tag, d["steal_pct"]))
    r = d.get("result") if isinstance(d, dict) else None
    if r and r.get("max_ms", 0) > 10 * max(r.get("p99_ms", 0), 1):
        notes.append("bench_batch %s: max %.0f ms against p99 %.1f ms" % (tag, r["max_ms"], r["p99_ms"]))

def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    a = abs(v)
    if a >= 1000:
        return "{:,.0f}".format(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    return "%.2f" % v

cpu = "unknown"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip()
        break
machine = {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
           "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
head = ("lmap benchmark, %s run, %s (%s, commit %s), %s, %d cores (%s); store %s records; "
        "%s s per measurement; loopback. wrk, the clients and the servers share the %d cores: "
        "every figure includes the load generator's CPU. Ratio = lmap / peer."
        % (E["MODE"], E["VERSION"], E["LMAP"], E["COMMIT"], date, machine["nproc"], cpu,
           format(main_n, ","), E["SECS"], machine["nproc"]))
print(head)
cols = ("row", "lmap", "peer", "ratio", "unit", "goal", "peer is")
table = [(r["label"], fmt(r["lmap"]), fmt(r["peer"]), "n/a" if r["ratio"] is None else "%.2fx" % r["ratio"],
          r["unit"], r["goal"], r["peer_is"]) for r in rows]
width = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
line = lambda t: "  ".join((s.ljust(width[i]) if i in (0, 4, 5, 6) else s.rjust(width[i])) for i, s in enumerate(t)).rstrip()
print(line(cols))
print("  ".join("-" * w for w in width))
for t in table:
    print(line(t))
for n in notes:
    print("note: " + n)
print("run took %s s; results: %s; plot: %s; logs: %s" % (E["TOTAL"], E["RESULTS"], E["PLOT"], E["RUN"]))
if not quick:
    print("a full run in an empty BENCH_DIR also makes the %s-record store (lmap synth, about 65 s on 2 cores) "
          "and the %s-file official-format tar (about 26 s)" % (format(1281167, ","), format(int(E["IMPORT_N"]), ",")))
else:
    print("quick run: 10,000-record store only (no scale comparison); import rates from a %s-file tar are "
          "dominated by fixed costs" % format(int(E["IMPORT_N"]), ","))

# Plot data.
series = {}
for name in ("batch", "clients", "conns"):
    pts = []
    for tag, d in by.items():
        if tag.startswith("series.%s." % name):
            x = int(tag.rsplit(".", 1)[1])
            y = d["result"]["labels_per_s"] if "result" in d else d["wrk"]["requests"] / (d["wrk"]["duration_us"] / 1e6)
            pts.append((x, y))
    pts.sort()
    series[name] = pts
    with open(os.path.join(E["RUN"], "plot-%s.dat" % name), "w") as f:
        f.write("# x labels_per_s\n")
        for x, y in pts:
            f.write("%d %.1f\n" % (x, y))

doc = {"date": date, "mode": E["MODE"], "machine": machine, "lmap_version": E["VERSION"],
       "commit": E["COMMIT"],
       "binaries": {"lmap": E["LMAP"], "lmapd": E["LMAPD"], "liblmap": E["LIB"], "bench_batch": E["BB"]},
       "settings": {"seconds": float(E["SECS"]), "connections": int(E["CONNS"]), "clients": int(E["CLIENTS"]),
                    "batch": int(E["BATCH"]), "main_store_records": main_n, "small_store_records": small_n,
                    "official_maps": int(E["PEER_MAPS"]), "import_tar_files": int(E["IMPORT_N"])},
       "shared_cores": "wrk, the liblmap clients, the official peer and the servers share the machine's cores",
       "rows": rows, "notes": notes, "series": series, "raw": raw, "elapsed_s": float(E["TOTAL"])}
with open(E["RESULTS"] + ".tmp", "w") as f:
    json.dump(doc, f, indent=1)
os.replace(E["RESULTS"] + ".tmp", E["RESULTS"])
PYEOF

if ((have_gnuplot)); then
  peer_rate=$($PY -c 'import json, sys; d = json.load(open(sys.argv[1])); print(next((r["peer"] or 0 for r in d["rows"] if r["row"] == "batch.labels_per_s"), 0))' "$results")
  if gnuplot -e "dir='$run'; out='$plot.tmp'; peer=$peer_rate; clients=$clients; subtitle='$mode run, $(date -u +%F), $main_n records, $("$LMAP" --version | head -1)'" \
      "$bench_src/plot.gp" 2> "$run/gnuplot.err"; then
    mv "$plot.tmp" "$plot"
  else
    failed "gnuplot: $(head -3 "$run/gnuplot.err" | tr '\n' ' ')"
  fi
fi
if ((failures)); then
  echo "run.sh: $failures step(s) failed (see the notes above and $run)" >&2
  exit 1
fi
