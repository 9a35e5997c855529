#!/bin/sh
# check_install: the installed liblmap package works for a consumer.
#
# usage: check_install.sh BUILD_DIR CONSUMER_SOURCE_DIR SCRATCH [sanitize]
#
# Installs BUILD_DIR with `cmake --install --prefix`, moves the installed
# tree elsewhere (the package must be relocatable), then builds
# consumer/consumer.c four ways and runs each: (a) find_package(lmap CONFIG)
# with lmap::client, (b) with lmap::client_static, (c) pkg-config (shared),
# (d) pkg-config --static against liblmap.a. The static programs must not
# need liblmap.so. "sanitize" as the 4th argument adds the ASan/UBSan flags
# an instrumented liblmap needs at the consumer's link. SCRATCH is this
# test's own directory (ctest runs tests in parallel); it is emptied first.
set -eu
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
scratch=$3
san=""
[ "${4:-}" = "sanitize" ] && san="-fsanitize=address,undefined"
cc=${CC:-cc}

rm -rf "$scratch"
mkdir -p "$scratch"
scratch=$(cd "$scratch" && pwd)
fails=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

installed=$scratch/installed
cmake --install "$build" --prefix "$installed" >"$scratch/install.log" 2>&1 ||
  { cat "$scratch/install.log"; echo "FAIL: cmake --install"; exit 1; }
prefix=$scratch/moved
mv "$installed" "$prefix"

pc=$(find "$prefix" -name lmap.pc | head -n 1)
[ -n "$pc" ] || { echo "FAIL: no lmap.pc installed"; exit 1; }
libdir=$(dirname "$(dirname "$pc")")
for f in include/lmap/client.h include/lmap/error.h include/lmap/version.h; do
  [ -f "$prefix/$f" ] && pass "installed $f" || fail "missing $prefix/$f"
done
for f in liblmap.a liblmap.so cmake/lmap/lmapConfig.cmake \
         cmake/lmap/lmapConfigVersion.cmake cmake/lmap/lmapTargets.cmake; do
  [ -e "$libdir/$f" ] && pass "installed lib/$f" || fail "missing $libdir/$f"
done
ls "$libdir"/liblmap.so.* >/dev/null 2>&1 && pass "versioned liblmap.so.*" ||
  fail "no versioned liblmap.so.* in $libdir"

# Runs a consumer; $2 is "shared" or "static".
run() {
  exe=$1 kind=$2 what=$3
  if [ "$kind" = shared ]; then
    out=$(LD_LIBRARY_PATH="$libdir" "$exe" 2>&1) || true
    deps=$(LD_LIBRARY_PATH="$libdir" ldd "$exe" 2>&1 || true)
    echo "$deps" | grep -q "liblmap.so.* => $libdir/" &&
      pass "$what: uses $libdir/liblmap.so" ||
      fail "$what: does not load the installed liblmap.so: $deps"
  else
    out=$(env -u LD_LIBRARY_PATH "$exe" 2>&1) || true
    if ldd "$exe" 2>&1 | grep -q liblmap || readelf -d "$exe" | grep -q 'NEEDED.*liblmap'; then
      fail "$what: a static consumer needs liblmap.so"
    else
      pass "$what: no liblmap.so needed"
    fi
  fi
  if echo "$out" | tail -n 1 | grep -qx 'consumer: ok' &&
     echo "$out" | grep -q 'lmap_client_info: -19 (server unavailable)'; then
    pass "$what: runs"
  else
    fail "$what: output:"
    echo "$out" | sed 's/^/    /'
  fi
}

# (a), (b): the CMake package.
cb=$scratch/cmake-build
if cmake -S "$src" -B "$cb" -DCMAKE_PREFIX_PATH="$prefix" \
     -DCMAKE_C_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" \
     >"$scratch/cmake.log" 2>&1 &&
   cmake --build "$cb" >>"$scratch/cmake.log" 2>&1; then
  pass "find_package(lmap CONFIG) build"
  run "$cb/consumer_shared" shared "(a) lmap::client"
  run "$cb/consumer_static" static "(b) lmap::client_static"
else
  sed 's/^/    /' "$scratch/cmake.log"
  fail "find_package(lmap CONFIG) build"
fi

# (c), (d): pkg-config, from the moved tree (the .pc is relocatable).
export PKG_CONFIG_PATH="$libdir/pkgconfig"
got=$(pkg-config --variable=prefix lmap)
[ "$(cd "$got" && pwd)" = "$prefix" ] && pass "lmap.pc prefix follows the tree" ||
  fail "lmap.pc prefix is $got, the tree is at $prefix"
pkg-config --exists --print-errors lmap && pass "pkg-config finds lmap" ||
  fail "pkg-config lmap"
if $cc $san "$src/consumer.c" $(pkg-config --cflags lmap) \
     $(pkg-config --libs lmap) -o "$scratch/consumer_pc" 2>"$scratch/pc.log"; then
  run "$scratch/consumer_pc" shared "(c) pkg-config"
else
  sed 's/^/    /' "$scratch/pc.log"
  fail "(c) pkg-config build"
fi

# --static adds Requires.private (libcurl, jansson) and their private
# libraries. liblmap itself is taken from the archive. Libraries that
# libcurl's .pc names but this system has no development link for (Debian's
# libcurl4-openssl-dev lists -lnghttp2, -lssh2 ... without them) are
# dropped, with a note: the shared libcurl brings them at run time.
static_libs=""
dropped=""
for f in $(pkg-config --static --libs lmap); do
  case $f in
    -llmap) static_libs="$static_libs $libdir/liblmap.a" ;;
    -l*)
      name=${f#-l}
      if [ "$($cc -print-file-name=lib$name.so)" != "lib$name.so" ] ||
         [ "$($cc -print-file-name=lib$name.a)" != "lib$name.a" ]; then
        static_libs="$static_libs $f"
      else
        dropped="$dropped $f"
      fi ;;
    *) static_libs="$static_libs $f" ;;
  esac
done
echo "$static_libs" | grep -q -- '-lcurl' && echo "$static_libs" | grep -q -- '-ljansson' &&
  pass "pkg-config --static lists libcurl and jansson" ||
  fail "pkg-config --static lmap lacks -lcurl or -ljansson: $static_libs"
[ -n "$dropped" ] && echo "note: no link file on this system for:$dropped"
if $cc $san "$src/consumer.c" $(pkg-config --cflags lmap) $static_libs \
     -o "$scratch/consumer_pc_static" 2>"$scratch/pcs.log"; then
  run "$scratch/consumer_pc_static" static "(d) pkg-config --static"
else
  sed 's/^/    /' "$scratch/pcs.log"
  fail "(d) pkg-config --static build"
fi

echo "check_install: $fails failure(s)"
[ "$fails" = 0 ]
