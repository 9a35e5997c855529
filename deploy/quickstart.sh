#!/usr/bin/env bash
# Quick start: installs the build dependencies (Debian packages, only those
# missing), builds lmap, makes a synthetic ImageNet-shaped demo store if
# there is none, and shows what is in it and one pooled soft label.
#
#   deploy/quickstart.sh             demo store at demo/imagenet-synth.lmap
#   LMAP_DEMO_IMAGES=100000 deploy/quickstart.sh   a bigger one
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake gcc make pkg-config liblmdb-dev libzstd-dev libjansson-dev libarchive-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "quickstart: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DLMAP_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" >/dev/null
lmap=build-release/lmap

store=demo/imagenet-synth.lmap
if [ ! -f "$store" ]; then
  mkdir -p demo
  "$lmap" synth -o "$store" --images "${LMAP_DEMO_IMAGES:-10000}" --classes 1000 --grid 15 --topk 5 --seed 1
fi

echo
echo "\$ $lmap info $store"
"$lmap" info "$store"
id=$("$lmap" ids "$store" | sed -n 1p)
echo
echo "\$ $lmap get $store $id --box 0.1,0.2,0.7,0.9 --format sparse"
"$lmap" get "$store" "$id" --box 0.1,0.2,0.7,0.9 --format sparse
