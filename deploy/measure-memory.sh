#!/usr/bin/env bash
# What holding a model costs in memory with `coldstart preload`, the numbers behind
# deploy/README.md. A synthetic model (default 1 GiB, `coldstart synth`) is served by the fake
# GCS server on loopback; preload fetches it (--to) or mounts it (--mount), and CMD, a script,
# reads every file once (as a model server does), then reports preload's peak RSS (VmHWM) and
# how much the machine's shared memory (tmpfs: /dev/shm, and Cloud Run's whole disk) and page
# cache grew.
#   deploy/measure-memory.sh [SIZE] [MODE...]   MODE: to-shm to-disk mount-shm mount-disk
#   MOUNT_READ=0 deploy/measure-memory.sh 1GiB mount-shm   the cache alone, no read through FUSE
# Run it on a quiet machine: the deltas are machine-wide (/proc/meminfo).
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-1GiB}"
shift || true
modes=("$@")
((${#modes[@]})) || modes=(to-shm to-disk mount-shm mount-disk)
bin="${COLDSTART_BUILD:-build}"
work="$(mktemp -d /tmp/coldstart-mem-XXXXXX)"
shm="$(mktemp -d /dev/shm/coldstart-mem-XXXXXX)"
server=""
cleanup() {
  [[ -n "$server" ]] && kill "$server" 2>/dev/null
  [[ -d "$work/mnt-m" ]] && fusermount3 -u "$work/mnt-m" 2>/dev/null || true
  rm -rf "$work" "$shm"
}
trap cleanup EXIT

"$bin/coldstart" synth "$work/buckets/bkt/m" --preset gemma-3-1b --size "$size" --shards 2 --seed 1 >/dev/null
model_bytes=$(du -sb "$work/buckets/bkt/m" | cut -f1)
"$bin/coldstart-fake-gcs" --root "$work/buckets" --port 0 --no-md5 >"$work/gcs.log" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/gcs.log" 2>/dev/null && break; sleep 0.1; done
export STORAGE_EMULATOR_HOST="$(grep -o 'http://[0-9.:]*' "$work/gcs.log" | head -1)"
export COLDSTART_METADATA=off

# CMD: read the model as a server would, then report.
# With --mount it first waits until read-ahead has put the whole model in the cache (the probe
# says 200);
# MOUNT_READ=0 skips the read through the mount (the cache's cost alone).
cat >"$work/reader.sh" <<'SH'
#!/bin/sh
if [ -n "$PROBE_LOG" ]; then
  port=$(sed -n 's|^coldstart: probe listening on http://127.0.0.1:\([0-9]*\)/$|\1|p' "$PROBE_LOG")
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ]; do sleep 0.1; done
fi
[ "$READ" = 0 ] || cat "$COLDSTART_MODEL_DIR"/*.safetensors >/dev/null
awk '/^VmHWM/{print "preload_peak_rss_kib", $2}' /proc/$PPID/status
awk '/^Shmem:/{print "shmem_kib", $2} /^Cached:/{print "cached_kib", $2}' /proc/meminfo
SH
chmod +x "$work/reader.sh"

meminfo() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
mib() { echo $(( $1 / 1024 )); }

# shmem: tmpfs pages (never reclaimed while the files exist); page cache: file pages of real
# disks and of the FUSE mount (reclaimable), i.e. Cached minus Shmem.
printf 'mount modes read through FUSE: %s\n' "$([ "${MOUNT_READ:-1}" = 0 ] && echo no || echo yes)"
printf '%-11s %10s %17s %11s %16s %8s\n' mode model_MiB preload_peak_MiB shmem_+MiB page_cache_+MiB seconds
for mode in "${modes[@]}"; do
  export READ=1 PROBE_LOG=
  case "$mode" in
    to-shm) args=(--to "$shm/model") ;;
    to-disk) args=(--to "$work/model") ;;
    mount-shm) args=(--mount "$work/mnt-m" --cache-dir "$shm/cache"); PROBE_LOG="$work/err" READ="${MOUNT_READ:-1}" ;;
    mount-disk) args=(--mount "$work/mnt-m" --cache-dir "$work/cache"); PROBE_LOG="$work/err" READ="${MOUNT_READ:-1}" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  shmem0=$(meminfo Shmem); cached0=$(meminfo Cached)
  t0=$(date +%s.%N)
  out=$(timeout 300 "$bin/coldstart" preload gs://bkt/m "${args[@]}" --progress off --probe-port 0 --probe-host 127.0.0.1 -- "$work/reader.sh" 2>"$work/err")
  t1=$(date +%s.%N)
  peak=$(awk '$1 == "preload_peak_rss_kib" {print $2}' <<<"$out")
  shmem1=$(awk '$1 == "shmem_kib" {print $2}' <<<"$out")
  cached1=$(awk '$1 == "cached_kib" {print $2}' <<<"$out")
  printf '%-11s %10d %17d %11d %16d %8.2f\n' "$mode" $((model_bytes >> 20)) "$(mib "$peak")" \
    "$(mib $((shmem1 - shmem0)))" "$(mib $((cached1 - cached0 - (shmem1 - shmem0))))" "$(echo "$t1 - $t0" | bc)"
  rm -rf "$shm/model" "$work/model" "$shm/cache" "$work/cache"
done
