#!/bin/sh
# check_symbols: liblmap exports its public API and nothing else.
#
# usage: check_symbols.sh LIBLMAP.so LIBLMAP.a INCLUDE_DIR
#
# The dynamic symbol table of the shared library must list exactly the
# functions declared with LMAP_API in INCLUDE_DIR/*.h (names read from the
# headers, comments and preprocessor lines removed), and every global symbol
# defined in the static library must start with lmap_, so that a program
# linking liblmap.a cannot collide with its internals. Absolute symbols (type
# A: the version nodes of a version script) are not functions and are skipped.
set -eu
so=$1
archive=$2
inc=$3
tmp=${TMPDIR:-/tmp}/check_symbols.$$
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

# Declared: the identifier before the first "(" of each LMAP_API declaration.
sed '/^[[:space:]]*#/d' "$inc"/*.h | tr '\n' ' ' |
  sed -E 's:/\*([^*]|\*+[^*/])*\*+/: :g' |
  grep -oE 'LMAP_API[^;(]*\(' |
  sed -E 's/[[:space:]]*\($//; s/.*[^A-Za-z0-9_]//' | sort -u >"$tmp/declared"

# Exported: defined dynamic symbols, version suffixes removed.
nm -D --defined-only "$so" | awk '$2 != "A" {print $3}' | sed 's/@.*//' |
  sort -u >"$tmp/exported"

# Global symbols defined in the archive's objects.
nm -g --defined-only "$archive" | awk 'NF == 3 {print $3}' | sort -u >"$tmp/globals"

fail=0
n=$(wc -l <"$tmp/declared")
if [ "$n" -lt 15 ]; then
  echo "FAIL: only $n LMAP_API functions found in $inc/*.h"
  fail=1
fi
if ! cmp -s "$tmp/declared" "$tmp/exported"; then
  echo "FAIL: $so exports other symbols than the headers declare"
  echo "  declared but not exported:"
  comm -23 "$tmp/declared" "$tmp/exported" | sed 's/^/    /'
  echo "  exported but not declared:"
  comm -13 "$tmp/declared" "$tmp/exported" | sed 's/^/    /'
  fail=1
fi
if grep -v '^lmap_' "$tmp/globals" >"$tmp/foreign"; then
  echo "FAIL: global symbols of $archive without the lmap_ prefix:"
  sed 's/^/    /' "$tmp/foreign"
  fail=1
fi
# Every public function is in the archive too.
if comm -23 "$tmp/declared" "$tmp/globals" | grep . >"$tmp/missing"; then
  echo "FAIL: declared but not defined in $archive:"
  sed 's/^/    /' "$tmp/missing"
  fail=1
fi
echo "check_symbols: $n declared, $(wc -l <"$tmp/exported") exported," \
  "$(wc -l <"$tmp/globals") archive globals: $([ $fail = 0 ] && echo ok || echo FAILED)"
exit $fail
