#!/usr/bin/env bash
# Packs what a GPU machine without apt needs to run the GPU tests and benchmarks: the
# executables and every shared library they load that is not part of glibc, into one folder
# (default .gpu-pack/, ignored by git) to carry there. On the GPU machine:
#   LD_LIBRARY_PATH=$PWD/.gpu-pack/lib .gpu-pack/tests/cuda_engine_test
#   LD_LIBRARY_PATH=$PWD/.gpu-pack/lib .gpu-pack/bench/gpu_h2d
#   LD_LIBRARY_PATH=$PWD/.gpu-pack/lib .gpu-pack/coldstart load MODEL --device cuda:0 --json
# The CUDA runtime is linked statically; the driver comes from the GPU machine. glibc is not
# packed: the GPU machine's must be at least Debian 12's (2.36).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.gpu-pack}"
rm -rf "$out"
mkdir -p "$out/lib" "$out/bench" "$out/tests"
bins=(build/coldstart build/coldstart-fake-gcs build/bench/gpu_h2d build/tests/cuda_engine_test build/tests/device_loader_test)
for b in "${bins[@]}"; do
  [[ -x "$b" ]] || { echo "pack-gpu: $b is missing (build with the CUDA toolkit first)" >&2; exit 1; }
done
cp build/coldstart build/coldstart-fake-gcs "$out/"
cp build/bench/gpu_h2d "$out/bench/"
cp build/tests/cuda_engine_test build/tests/device_loader_test "$out/tests/"
for b in "${bins[@]}"; do
  ldd "$b" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*|libcuda.so.*) ;;
      *) cp -Ln "$lib" "$out/lib/" ;;
    esac
  done
done
# Debug info is most of the bytes; the carry limit is 64 MiB.
find "$out" -type f -exec strip --strip-debug {} + 2>/dev/null || true
du -sh "$out"
