#!/usr/bin/env bash
# Makes a Docker engine and the image's base (debian:12-slim) available on
# this machine, for the container tests:
# - starts Debian's dockerd when no engine answers (its log:
#   /var/log/lmap-dockerd.log), and waits for it;
# - when debian:12-slim is not in the engine and cannot be pulled (these
#   machines have no registry), makes it with debootstrap --variant=minbase
#   bookworm from the machine's Debian mirror and `docker import`s it. The
#   engine keeps it: later runs on the machine find it there.
#
# Exit 0 when the engine and the base are ready; 3, after one line saying
# why, when this machine cannot run containers (the caller skips the
# container tests and says so); 1 on any other failure. A dockerd started
# here has its pid in $LMAP_DOCKERD_PIDFILE (when set), for the caller to
# stop.
set -euo pipefail

docker=/usr/bin/docker # Debian's client, the engine's own version
base=debian:12-slim
log=/var/log/lmap-dockerd.log

no_engine() {
  echo "docker-env: no container engine on this machine: $*" >&2
  exit 3
}

[ -x "$docker" ] && command -v dockerd >/dev/null || no_engine "docker.io is not installed"

if ! "$docker" info >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || no_engine "no engine runs and starting one needs root"
  echo "docker-env: starting dockerd (log: $log)"
  # setsid: its own session, out of the caller's terminal signals.
  setsid dockerd >"$log" 2>&1 </dev/null &
  [ -z "${LMAP_DOCKERD_PIDFILE:-}" ] || echo $! >"$LMAP_DOCKERD_PIDFILE"
  for _ in $(seq 1 60); do
    "$docker" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$docker" info >/dev/null 2>&1 ||
    no_engine "dockerd did not start: $(tail -n 1 "$log" 2>/dev/null)"
fi

if ! "$docker" image inspect "$base" >/dev/null 2>&1 &&
  ! timeout 30 "$docker" pull -q "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || no_engine "debootstrap is not installed"
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\/*\)$/\1/p' \
    /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  mirror=${mirror:-http://deb.debian.org/debian}
  root=$(mktemp -d /tmp/lmap-debian12.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "docker-env: making $base with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 5 "$root.log" >&2
    rm -f "$root.log"
    exit 1
  }
  rm -f "$root.log"
  # What a slim image leaves out: apt's lists and caches.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  tar -C "$root" -c . | "$docker" import - "$base" >/dev/null
  echo "docker-env: $base made ($("$docker" image inspect -f '{{.Size}}' "$base") bytes)"
fi
