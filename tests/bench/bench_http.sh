#!/usr/bin/env bash
# HTTP benchmark: wrk against lmapd (single GET /v1/labels/{id} with random
# ids and boxes, sparse and dense, 64 connections) and, in the same run,
# against nginx serving a static file of the same size as lmap's answer.
# Prints requests/s, p50 and p99 for each and the lmap/nginx ratio.
# Loopback only; every run is bounded in time; both servers are stopped by
# their PIDs.
#
#   tests/bench/bench_http.sh [seconds per run (default 5)] [images (default 100000)]
# Env: LMAP_BIN, LMAPD_BIN (default build/lmap, build/lmapd), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
images=${2:-100000}
lmap=${LMAP_BIN:-build/lmap}
lmapd=${LMAPD_BIN:-build/lmapd}
dir=${BENCH_DIR:-/tmp/lmap-bench}/http
mkdir -p "$dir/www"
deploy/install-deps.sh wrk nginx-light >&2

store="$dir/bench-$images.lmap"
[ -f "$store" ] && "$lmap" info "$store" >/dev/null 2>&1 ||
  "$lmap" synth -o "$store" --images "$images" --force --no-progress >&2
"$lmap" ids "$store" > "$dir/ids.txt"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$lmapd" --store "$store" --listen 127.0.0.1:0 --threads 2 2> "$dir/lmapd.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '"listening"' "$dir/lmapd.log" && break; sleep 0.05; done
lport=$(grep -o '"port":[0-9]*' "$dir/lmapd.log" | head -1 | cut -d: -f2)

# Static files of the size of one sparse and one dense answer.
id=$(head -n 1 "$dir/ids.txt")
curl -s "http://127.0.0.1:$lport/v1/labels/$id?box=0.2,0.2,0.7,0.8&format=sparse" > "$dir/www/sparse.json"
curl -s "http://127.0.0.1:$lport/v1/labels/$id?box=0.2,0.2,0.7,0.8&format=dense" > "$dir/www/dense.json"

nport=$((lport + 1))
cat > "$dir/nginx.conf" <<EOT
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  server { listen 127.0.0.1:$nport; root $dir/www; default_type application/json; }
}
EOT
mkdir -p "$dir/tmp"
nginx -c "$dir/nginx.conf" &
pids+=($!)
sleep 0.5

# Random ids and boxes, drawn by wrk's Lua.
cat > "$dir/labels.lua" <<'EOT'
local ids = {}
for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
local fmt = os.getenv("FORMAT")
math.randomseed(7)
request = function()
  local x0, x1 = math.random(), math.random()
  local y0, y1 = math.random(), math.random()
  if x0 > x1 then x0, x1 = x1, x0 end
  if y0 > y1 then y0, y1 = y1, y0 end
  local path = string.format("/v1/labels/%s?box=%.4f,%.4f,%.4f,%.4f&format=%s",
                             ids[math.random(#ids)], x0, y0, x1, y1, fmt)
  return wrk.format("GET", path)
end
EOT

run() { # url [script env...] -> "rps p50_ms p99_ms"
  local out
  out=$(env "${@:2}" wrk -t2 -c64 -d"${secs}s" --latency ${SCRIPT:+-s "$SCRIPT"} "$1")
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  echo "$rps $p50 $p99"
}

printf '%-8s %-7s %12s %10s %10s %8s\n' form server requests/s p50 p99 ratio
for form in sparse dense; do
  l=$(SCRIPT="$dir/labels.lua" run "http://127.0.0.1:$lport" IDS="$dir/ids.txt" FORMAT=$form)
  n=$(SCRIPT= run "http://127.0.0.1:$nport/$form.json")
  bytes=$(stat -c %s "$dir/www/$form.json")
  read -r lr l50 l99 <<< "$l"
  read -r nr n50 n99 <<< "$n"
  printf '%-8s %-7s %12s %10s %10s %8s\n' "$form" lmapd "$lr" "$l50" "$l99" \
    "$(awk -v a="$lr" -v b="$nr" 'BEGIN { printf "%.2f", a / b }')"
  printf '%-8s %-7s %12s %10s %10s %8s\n' "($bytes B)" nginx "$nr" "$n50" "$n99" ""
done
