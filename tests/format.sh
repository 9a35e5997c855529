#!/usr/bin/env bash
# Checks that every C file of the tree is as clang-format 14 writes it
# (.clang-format at the top); prints the first differences and fails if
# not.
#
#   tests/format.sh         check
#   tests/format.sh --fix   rewrite the files in place
#
# Pinned to clang-format 14 (Debian 12's): other versions lay out some
# constructs differently.
set -euo pipefail
cd "$(dirname "$0")/.."

tool=clang-format-14
command -v "$tool" >/dev/null ||
  { echo "format.sh: $tool is not installed (apt-get install clang-format-14)" >&2; exit 2; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.c' '*.h')
else
  mapfile -t files < <(find client include server tests -name '*.[ch]' | sort)
fi

if [ "${1:-}" = --fix ]; then
  "$tool" -i "${files[@]}"
  exit 0
fi
report=$(mktemp)
trap 'rm -f "$report"' EXIT
if ! "$tool" --dry-run --Werror "${files[@]}" 2>"$report"; then
  head -60 "$report"
  echo "format.sh: $(grep -c 'error:' "$report") places differ from clang-format 14;" \
    "tests/format.sh --fix rewrites them" >&2
  exit 1
fi
echo "format.sh: ${#files[@]} C files as clang-format 14 writes them"
