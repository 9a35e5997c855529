#!/usr/bin/env bash
# The deploy suite: what lmap ships for running it as a service, each piece
# run here. The systemd unit (test_systemd.sh), the Kubernetes objects
# (test_k8s.sh; rendered and validated, no cluster). Containers: the image built
# from the Dockerfile and run (test_container.py), the Debian packages
# installed into a clean Debian 12 and removed (test_deb.sh), three replicas as its
# containers behind HAProxy (test_e2e_replicas.py --containers), the one-box
# lab (test_compose.py: docker-compose), on a Docker engine
# tests/deploy/docker-env.sh makes available; where no engine can run, one
# line says so and the rest of the suite still runs.
#
#   tests/deploy/run.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
build=$(realpath "${1:-build}")
py=/usr/bin/python3

# A dockerd this suite starts is stopped by its pid when the suite ends.
export LMAP_DOCKERD_PIDFILE=$(mktemp /tmp/lmap-dockerd.XXXXXX)
stop_dockerd() {
  local pid
  pid=$(cat "$LMAP_DOCKERD_PIDFILE" 2>/dev/null || true)
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$LMAP_DOCKERD_PIDFILE"
}
trap stop_dockerd EXIT

tests/deploy/test_systemd.sh "$build"
tests/deploy/test_k8s.sh

rc=0
tests/deploy/docker-env.sh || rc=$?
if [ "$rc" -eq 3 ]; then
  echo "deploy: container tests skipped: this machine cannot run a Docker engine (see above)"
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
else
  $py tests/deploy/test_container.py "$build/lmap"
  # The Debian packages, installed into a clean Debian 12 container.
  tests/deploy/test_deb.sh "$build"
  # The replica test of tests/e2e with the replicas as containers of that
  # image, then the one-box lab.
  LMAP_BIN="$build/lmap" LMAPD_BIN="$build/lmapd" LMAP_TEST_TMP="$build/tests/tmp/deploy" \
    LMAP_LIBRARY="$build/client/liblmap.so.1" \
    $py tests/e2e/test_e2e_replicas.py --containers lmap:test
  $py tests/deploy/test_compose.py "$build/lmap"
fi
