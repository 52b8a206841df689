#!/bin/bash
# CPU seconds of `curl -o` (one stream per file, one file after another) vs `coldstart prefetch`
# of the same folder, from an HTTP server on loopback, interleaved round by round.
#   [ROUNDS=3] [PRIME="LOCAL FILE..."] bash bench/prefetch_cpu.sh http://127.0.0.1:PORT/m/ FILE...
# (bench/remote_prefetch.py starts such an nginx: its "uncapped" port.) With PRIME (local copies
# of the served files, e.g. nginx's docroot), build/bench/seqread --keep faults in and frees twice
# their size of memory before each contender, so the cost this VM pays for memory its host took
# back (see RESULTS.md, "Noise handling") falls on the primer, not on the contender.
set -euo pipefail
base=$1; shift
rounds=${ROUNDS:-3}
here=$(dirname "$0")
cs=$here/../build/coldstart
seqread=$here/../build/bench/seqread
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prime() {
  if [[ -n "${PRIME:-}" ]]; then
    # shellcheck disable=SC2086
    "$seqread" --keep $PRIME $PRIME >/dev/null
  fi
}
for r in $(seq "$rounds"); do
  rm -rf "$work/cu" "$work/cs"; mkdir "$work/cu"
  prime
  /usr/bin/time -f "round $r curl      wall %e s  cpu %U+%S s" bash -c \
    'for f in "$@"; do curl -fs -o "'"$work"'/cu/$f" "'"$base"'$f"; done' _ "$@"
  prime
  /usr/bin/time -f "round $r coldstart wall %e s  cpu %U+%S s" "$cs" prefetch "$base" "$work/cs" --progress off >/dev/null
done
echo "bytes: $(du -sb "$work/cs" | cut -f1)"
