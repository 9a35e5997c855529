#!/usr/bin/env bash
# The project's test command: installs what the build and the tests need
# (Debian packages, only those missing), checks the C formatting
# (tests/format.sh), builds, and runs every ctest suite
# (unit, oracle, e2e with the store browser in headless Chromium, client,
# python, bench), the deploy suite (the container
# image built and run: tests/deploy/run.sh), a short soak of the real lmapd,
# the unit, e2e and client tests again under AddressSanitizer + UBSan, the
# e2e tests under ThreadSanitizer, and each libFuzzer target for 20 s.
#
#   tests/run.sh            everything
#   LMAP_SKIP_SANITIZE=1    skip the ASan/UBSan pass
#   LMAP_SKIP_TSAN=1        skip the ThreadSanitizer pass
#   LMAP_SKIP_FUZZ=1        skip the fuzzing (the targets still run their
#                           corpora and regression inputs as unit tests)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  cmake gcc make pkg-config
  liblmdb-dev libzstd-dev libjansson-dev libarchive-dev libmicrohttpd-dev libuv1-dev libcurl4-openssl-dev
  python3-torch python3-torchvision python3-numpy
  wrk nginx-light gnuplot-nox
  libxxhash-dev libsystemd-dev clang libclang-rt-14-dev clang-format-14
  docker.io docker-compose debootstrap haproxy gettext-base openssl python3-yaml
  chromium python3-build python3-venv python3-pip python3-setuptools python3-wheel
  help2man lintian dpkg-dev
)
deploy/install-deps.sh "${packages[@]}"
# The store browser's test drives Chromium with playwright-core (npm, the
# version pinned in tests/browser/package-lock.json).
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

tests/format.sh

jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLMAP_WERROR=ON
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

tests/deploy/run.sh build

if [ -z "${LMAP_SKIP_SANITIZE:-}" ]; then
  cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DLMAP_SANITIZE=ON -DLMAP_WERROR=ON
  cmake --build build-sanitize -j"$jobs"
  ctest --test-dir build-sanitize --output-on-failure -j"$jobs" -L 'unit|e2e|client'
fi

tests/soak/run.sh 20 build/lmapd build/lmap

if [ -z "${LMAP_SKIP_TSAN:-}" ]; then
  tests/tsan.sh e2e
fi

if [ -z "${LMAP_SKIP_FUZZ:-}" ]; then
  tests/fuzz/run.sh 20
fi
