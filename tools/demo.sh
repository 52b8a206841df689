#!/usr/bin/env bash
# The main job on an embedded default (README): builds coldstart, writes a synthetic
# Gemma-3-style model and loads it into libtorch tensors, printing what was loaded and how fast.
#   tools/demo.sh [SIZE]    SIZE defaults to 512MiB (any size: 2GiB, 8GiB, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-512MiB}"
bash tools/setup.sh
work="${COLDSTART_DEMO_DIR:-/tmp/coldstart-demo}"
mkdir -p "$work"
echo "== synthesising a $size Gemma-3-style model in $work/model"
build/coldstart synth "$work/model" --preset gemma-3-1b --size "$size" --seed 1
echo "== inspect (headers only)"
build/coldstart inspect "$work/model" | tail -n 4
echo "== load into CPU memory as libtorch tensors"
build/coldstart load "$work/model" --device cpu
