#!/bin/bash
# CPU seconds of `curl -o` (one stream per file, one file after another) vs `coldstart prefetch`
# of the same folder, from an HTTP server on loopback, interleaved round by round.
#   bash bench/prefetch_cpu.sh http://127.0.0.1:PORT/m/ FILE... [ROUNDS=3]
# (bench/remote_prefetch.py starts such an nginx: its "uncapped" port.)
set -euo pipefail
base=$1; shift
rounds=${ROUNDS:-3}
cs=$(dirname "$0")/../build/coldstart
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for r in $(seq "$rounds"); do
  rm -rf "$work/cu" "$work/cs"; mkdir "$work/cu"
  /usr/bin/time -f "round $r curl      wall %e s  cpu %U+%S s" bash -c \
    'for f in "$@"; do curl -fs -o "'"$work"'/cu/$f" "'"$base"'$f"; done' _ "$@"
  /usr/bin/time -f "round $r coldstart wall %e s  cpu %U+%S s" "$cs" prefetch "$base" "$work/cs" --progress off >/dev/null
done
echo "bytes: $(du -sb "$work/cs" | cut -f1)"
