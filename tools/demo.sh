#!/usr/bin/env bash
# The main job on an embedded default (README): builds coldstart, writes a synthetic
# Gemma-3-style model into a local fake GCS bucket, serves it with coldstart-fake-gcs on
# loopback, then prefetches it to disk and loads it into libtorch tensors through gs://,
# printing what was loaded and how fast, then loads it twice through the disk cache (the second
# from local disk). No cloud account needed.
#   tools/demo.sh [SIZE]    SIZE defaults to 512MiB (any size: 2GiB, 8GiB, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-512MiB}"
bash tools/setup.sh
work="${COLDSTART_DEMO_DIR:-/tmp/coldstart-demo}"
bucket="$work/buckets/demo-bucket"
mkdir -p "$bucket"
echo "== synthesising a $size Gemma-3-style model as gs://demo-bucket/gemma-3-synth/"
build/coldstart synth "$bucket/gemma-3-synth" --preset gemma-3-1b --size "$size" --seed 1

echo "== starting the fake GCS server on loopback"
log="$work/fake-gcs.log"
build/coldstart-fake-gcs --root "$work/buckets" --port 0 --no-md5 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" 2>/dev/null && break; sleep 0.1; done
endpoint=$(grep -o 'http://[0-9.:]*' "$log" | head -1)
[[ -n "$endpoint" ]] || { cat "$log"; exit 1; }
export STORAGE_EMULATOR_HOST="$endpoint"
echo "   STORAGE_EMULATOR_HOST=$endpoint"

echo "== coldstart inspect gs://demo-bucket/gemma-3-synth (headers only, ranged reads)"
build/coldstart inspect gs://demo-bucket/gemma-3-synth | tail -n 3
echo "== coldstart prefetch gs://demo-bucket/gemma-3-synth $work/model"
rm -rf "$work/model"
build/coldstart prefetch gs://demo-bucket/gemma-3-synth "$work/model"
echo "== coldstart load gs://demo-bucket/gemma-3-synth (network straight into tensors)"
build/coldstart load gs://demo-bucket/gemma-3-synth --device cpu
echo "== coldstart load $work/model (local disk)"
build/coldstart load "$work/model" --device cpu
echo "== coldstart load gs://demo-bucket/gemma-3-synth --cache-dir $work/cache, twice (the second reads the disk cache)"
rm -rf "$work/cache"
build/coldstart load gs://demo-bucket/gemma-3-synth --no-torch --cache-dir "$work/cache"
build/coldstart load gs://demo-bucket/gemma-3-synth --no-torch --cache-dir "$work/cache"
build/coldstart cache ls --cache-dir "$work/cache" | tail -n 1
