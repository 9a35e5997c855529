#!/usr/bin/env bash
# The Debian packages (cmake/packaging.cmake): built by CPack from a
# packaging build of this tree, checked by lintian, then installed with apt
# into a clean Debian 12 (the debian:12-slim image tests/deploy/docker-env.sh
# provides: debootstrap's minbase), where lmapd --help, lmap info on a store,
# the man pages, the unit, the configuration and the user lmap are there; a
# consumer program is compiled against the installed lmap.pc (shared and
# static) and run; then the packages are removed (the configuration stays)
# and purged (nothing of lmap's is left).
#
#   tests/deploy/test_deb.sh BUILD_DIR     (BUILD_DIR/lmap makes the store)
#
# Needs the Docker engine (run.sh calls it when docker-env.sh has one) and
# Debian's mirror, which apt in the container reaches through the host's
# network.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=$(realpath "${1:-build}")
deb_build=$build-deb
docker=/usr/bin/docker
image=debian:12-slim
work=$(mktemp -d /tmp/lmap-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "test_deb: building the packages in $deb_build"
cmake -S . -B "$deb_build" -DLMAP_PACKAGE=ON -DCMAKE_BUILD_TYPE=Release \
  -DLMAP_BUILD_TESTS=OFF -DLMAP_WERROR=ON -DCMAKE_INSTALL_PREFIX=/usr >"$work/cmake.log" 2>&1 ||
  { cat "$work/cmake.log"; exit 1; }
cmake --build "$deb_build" -j"$(nproc)" >>"$work/cmake.log" 2>&1 || { tail -n 40 "$work/cmake.log"; exit 1; }
rm -f "$deb_build"/*.deb
(cd "$deb_build" && cpack -G DEB >>"$work/cmake.log" 2>&1) || { tail -n 40 "$work/cmake.log"; exit 1; }
version=$("$deb_build/lmapd" --version | cut -d' ' -f2)
mkdir "$work/debs"
cp "$deb_build"/lmap_"$version"-*_amd64.deb "$deb_build"/liblmap1_"$version"-*_amd64.deb \
  "$deb_build"/liblmap-dev_"$version"-*_amd64.deb "$work/debs/"
ls "$work/debs"

# lintian: no error or warning but these, each explained:
# - bogus-mail-host, bogus-mail-host-in-debian-changelog: the Maintainer is
#   a placeholder until a lab sets its own (-DLMAP_PACKAGE_CONTACT=...);
# - initial-upload-closes-no-bugs: these packages are not uploads to Debian;
# - maintscript-calls-ldconfig: CPack writes liblmap1's postinst and postrm
#   with an ldconfig call; the package's ldconfig trigger does the same.
# Its informational tags (pedantic and info) are printed, not failed on.
suppressed=bogus-mail-host,bogus-mail-host-in-debian-changelog,initial-upload-closes-no-bugs,maintscript-calls-ldconfig
lintian --fail-on error,warning --suppress-tags "$suppressed" "$work"/debs/*.deb 2>&1 |
  grep -v 'running with root privileges' || true
if ! lintian --fail-on error,warning --suppress-tags "$suppressed" "$work"/debs/*.deb >/dev/null 2>&1; then
  echo "test_deb: FAIL: lintian reports an error or a warning (above)" >&2
  exit 1
fi
echo "test_deb: lintian: no error or warning but the $(echo "$suppressed" | tr , '\n' | wc -l) explained ones"

mkdir "$work/data"
"$build/lmap" synth -o "$work/data/store.lmap" --images 20 --level 1 --no-progress >/dev/null 2>&1
cp tests/client/consumer/consumer.c "$work/data/"
chmod -R a+rX "$work"

# Inside the clean Debian 12: every step prints "ok: ..." or fails the run.
cat >"$work/data/inside.sh" <<'EOF'
set -eu
version=$1
ok() { echo "ok: $*"; }
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends /debs/*.deb >/tmp/apt.log 2>&1 ||
  { tail -n 30 /tmp/apt.log; exit 1; }
ok "apt installs lmap, liblmap1 and liblmap-dev with their dependencies"
lmapd --help | head -n 1 | grep -q '^usage: lmapd' && ok "lmapd --help"
[ "$(lmapd --version)" = "lmapd $version" ] && [ "$(lmap --version)" = "lmap $version" ] &&
  ok "lmapd and lmap --version: $version"
lmap info /data/store.lmap | grep -q '^record_count  *20$' && ok "lmap info on a store: 20 records"
zcat /usr/share/man/man8/lmapd.8.gz | grep -q '^\.TH LMAPD "8"' &&
  zcat /usr/share/man/man1/lmap.1.gz | grep -q '^\.TH LMAP "1"' && ok "man pages lmapd(8), lmap(1)"
grep -q '^ExecStart=/usr/bin/lmapd$' /lib/systemd/system/lmapd.service &&
  grep -q '^User=lmap$' /lib/systemd/system/lmapd.service && ok "the systemd unit"
grep -q '^LMAPD_STORE=' /etc/lmap/lmapd.env && dpkg-query -W -f='${Conffiles}' lmap | grep -q /etc/lmap/lmapd.env &&
  ok "/etc/lmap/lmapd.env, a conffile"
getent passwd lmap | grep -q ':/nonexistent:/usr/sbin/nologin$' && ok "the system user lmap"
apt-get install -y -qq --no-install-recommends gcc libc6-dev pkg-config >/tmp/apt.log 2>&1 ||
  { tail -n 30 /tmp/apt.log; exit 1; }
cd /tmp
cc -o consumer /data/consumer.c $(pkg-config --cflags --libs lmap)
./consumer http://127.0.0.1:9 | tail -n 1 | grep -qx 'consumer: ok' && ok "a consumer built with lmap.pc runs (shared)"
ldd ./consumer | grep -q 'liblmap.so.1 => /lib/x86_64-linux-gnu/liblmap.so.1\|liblmap.so.1 => /usr/lib/x86_64-linux-gnu/liblmap.so.1' &&
  ok "it loads the installed liblmap.so.1"
# liblmap.a with the shared libcurl and jansson its package depends on
# (pkg-config --static would ask for every static library of curl's).
cc -o consumer_static /data/consumer.c $(pkg-config --cflags lmap) \
  /usr/lib/x86_64-linux-gnu/liblmap.a $(pkg-config --libs libcurl jansson)
./consumer_static http://127.0.0.1:9 | tail -n 1 | grep -qx 'consumer: ok' &&
  ! ldd ./consumer_static | grep -q liblmap && ok "a consumer built with liblmap.a runs (static)"
apt-get remove -y -qq liblmap-dev liblmap1 lmap >/tmp/apt.log 2>&1 || { tail -n 30 /tmp/apt.log; exit 1; }
[ ! -e /usr/bin/lmapd ] && [ ! -e /usr/include/lmap ] && [ ! -e /lib/systemd/system/lmapd.service ] &&
  [ -f /etc/lmap/lmapd.env ] && ok "removed: the files are gone, the configuration stays"
dpkg --purge lmap liblmap1 liblmap-dev >/tmp/apt.log 2>&1 || { tail -n 30 /tmp/apt.log; exit 1; }
[ ! -e /etc/lmap ] && ok "purged: /etc/lmap is gone"
left=$(find / -xdev \( -path /proc -o -path /data -o -path /debs -o -path /tmp \) -prune -o \
  \( -name '*lmap*' -o -name 'lmapd*' \) -print)
[ -z "$left" ] && ok "nothing of lmap's is left on the system" || { echo "left: $left"; exit 1; }
[ -z "$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null | grep -E ' (lmap|liblmap1|liblmap-dev)$')" ] &&
  ok "dpkg knows none of the packages any more"
EOF

echo "test_deb: installing into a clean $image"
out=$("$docker" run --rm --network host -v "$work/debs:/debs:ro" -v "$work/data:/data:ro" \
  "$image" bash /data/inside.sh "$version" 2>&1) || {
  echo "$out"
  echo "test_deb: FAIL: the install test in $image failed (above)" >&2
  exit 1
}
echo "$out" | grep '^ok: '
want=15
got=$(echo "$out" | grep -c '^ok: ')
if [ "$got" -ne "$want" ]; then
  echo "$out"
  echo "test_deb: FAIL: $got of $want checks passed in $image" >&2
  exit 1
fi
echo "test_deb: the packages install, work and leave cleanly ($got checks)"
