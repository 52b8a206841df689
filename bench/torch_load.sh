#!/usr/bin/env bash
# libtorch in the cold start (issue #9): `coldstart load MODEL` into torch tensors against the
# same bytes in memory (--no-torch), and into tensors after libtorch's libraries are dropped from
# the page cache (posix_fadvise DONTNEED on the plugin and every library ldd lists for it).
# Interleaved, RUNS rounds; prints each variant's `seconds` (process start to tensors), sorted.
# Before every run, build/bench/seqread --keep faults in and frees twice the model's size of
# memory (as bench/runai_compare.py does), so the cost this VM pays for memory its host took back
# falls on the primer, not on the contender.
#   bench/torch_load.sh [MODEL (default /tmp/m2g: coldstart synth /tmp/m2g --preset gemma-3-1b --size 2GiB)] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-/tmp/m2g}"
runs="${2:-5}"
[[ -d "$model" ]] || build/coldstart synth "$model" --preset gemma-3-1b --size 2GiB >/dev/null
drop_libs() {
  python3 - "$PWD/build/libcoldstart_torch.so" <<'PY'
import os, subprocess, sys
plugin = sys.argv[1]
out = subprocess.run(["ldd", plugin], capture_output=True, text=True).stdout
libs = [l.split("=>")[1].split("(")[0].strip() for l in out.splitlines() if "=> /" in l] + [plugin]
for p in libs:
    fd = os.open(os.path.realpath(p), os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}
files=("$model"/*.safetensors)
for ((i = 0; i < runs; i++)); do
  for mode in no-torch torch torch-libs-dropped; do
    build/bench/seqread --keep "${files[@]}" "${files[@]}" >/dev/null
    args=()
    case $mode in
      no-torch) args=(--no-torch) ;;
      torch-libs-dropped) drop_libs ;;
    esac
    secs=$(build/coldstart load "$model" --json "${args[@]}" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["seconds"], 3))')
    echo "$mode $secs"
  done
done | sort -k1,1 -k2,2n | awk '{a[$1] = a[$1] " " $2} END {for (k in a) print k ":" a[k]}'
