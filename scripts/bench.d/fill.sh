#!/usr/bin/env bash
# fill.py for machines without Python: copies a sample of the host's files
# into DEST, up to BUDGET bytes, taking them in a shuffled order (sort -R
# hashes each line with a fixed random source, so the same host gives the
# same sample) so every root is represented.
#
# usage: fill.sh DEST BUDGET_BYTES ROOT...
set -euo pipefail
dest=$1 budget=$2
shift 2
mkdir -p "$dest"
list=$(mktemp)
trap 'rm -f "$list"' EXIT
find "$@" -type f -readable -printf '%s\t%p\n' 2>/dev/null |
  sort -R --random-source=<(yes imprint-bench) |
  awk -F'\t' -v budget="$budget" 'total + $1 <= budget { total += $1; print $2 }' >"$list"
tar -cf - --no-recursion -T "$list" 2>/dev/null | tar -xf - -C "$dest"
