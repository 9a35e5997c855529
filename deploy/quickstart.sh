#!/usr/bin/env bash
# Quick start: installs the build dependencies (Debian packages, only those
# missing), builds lmap and lmapd, makes a synthetic ImageNet-shaped demo
# store if there is none, shows what is in it and one pooled soft label,
# then serves it with lmapd in the foreground (Ctrl-C stops it).
#
#   deploy/quickstart.sh             demo store at demo/imagenet-synth.lmap
#   LMAP_DEMO_IMAGES=100000 deploy/quickstart.sh   a bigger one
#   LMAP_PORT=9000 deploy/quickstart.sh            another port (default 8080)
#   LMAP_NO_SERVE=1 deploy/quickstart.sh           stop before serving
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake gcc make pkg-config liblmdb-dev libzstd-dev libjansson-dev libarchive-dev
  libmicrohttpd-dev libuv1-dev libcurl4-openssl-dev libxxhash-dev libsystemd-dev)
deploy/install-deps.sh "${packages[@]}"

cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DLMAP_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" >/dev/null
lmap=build-release/lmap

store=demo/imagenet-synth.lmap
# (Re)make the demo store when there is none or this lmap cannot read it.
if ! "$lmap" info "$store" >/dev/null 2>&1; then
  mkdir -p demo
  "$lmap" synth -o "$store" --force --images "${LMAP_DEMO_IMAGES:-10000}" \
    --classes 1000 --grid 15 --topk 5 --seed 1
fi

echo
echo "\$ $lmap info $store"
"$lmap" info "$store"
id=$("$lmap" ids "$store" | sed -n 1p)
echo
echo "\$ $lmap get $store $id --box 0.1,0.2,0.7,0.9 --format sparse"
"$lmap" get "$store" "$id" --box 0.1,0.2,0.7,0.9 --format sparse

[ -z "${LMAP_NO_SERVE:-}" ] || exit 0
port=${LMAP_PORT:-8080}
cat <<EOT

Serving $store on http://127.0.0.1:$port (Ctrl-C to stop).

Browse it: open http://127.0.0.1:$port/ in a browser (the ids, the maps, a crop box
and its soft label, live).

Or try, in another shell:
  curl -s 'http://127.0.0.1:$port/v1/labels/$id?box=0.1,0.2,0.7,0.9&format=sparse'
  curl -s -XPOST http://127.0.0.1:$port/v1/labels \\
       -d '{"queries":[{"id":"$id","box":[0,0,1,1],"flip":false}],"format":"sparse"}'
  curl -s -H 'Accept: application/x-npy' 'http://127.0.0.1:$port/v1/maps/$id' -o map.npy
  curl -s http://127.0.0.1:$port/v1/info
  curl -s http://127.0.0.1:$port/metrics
EOT
exec build-release/lmapd --store "$store" --listen "127.0.0.1:$port"
