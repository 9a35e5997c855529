#!/usr/bin/env bash
# The systemd unit as shipped (deploy/systemd/lmapd.service), its ExecStart
# pointed at this build's lmapd: `systemd-analyze verify` passes and
# `systemd-analyze security --offline=yes` scores it 2.0 or less. (The
# READY/RELOADING/STOPPING messages themselves: tests/e2e/test_e2e_notify.py.)
#
#   tests/deploy/test_systemd.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
lmapd=$(realpath "${1:-build}/lmapd")
unit=deploy/systemd/lmapd.service
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

grep -q '^ExecStart=/usr/bin/lmapd$' "$unit" || {
  echo "test_systemd: $unit: ExecStart is not /usr/bin/lmapd" >&2
  exit 1
}
sed "s|^ExecStart=/usr/bin/lmapd$|ExecStart=$lmapd|" "$unit" >"$dir/lmapd.service"
if ! out=$(systemd-analyze verify "$dir/lmapd.service" 2>&1) || [ -n "$out" ]; then
  echo "test_systemd: systemd-analyze verify $unit:" >&2
  echo "$out" >&2
  exit 1
fi
score=$(systemd-analyze security --offline=yes "$dir/lmapd.service" 2>&1 |
  sed -n 's/.*Overall exposure level for lmapd.service: \([0-9.]*\).*/\1/p')
if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
  echo "test_systemd: $unit: exposure ${score:-unknown}, above 2.0" >&2
  exit 1
fi
echo "test_systemd: $unit verifies; exposure $score (limit 2.0)"
