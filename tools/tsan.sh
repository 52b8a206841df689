#!/usr/bin/env bash
# ThreadSanitizer run of the concurrency-heavy suites (CTest label tsan): the local reader
# (io_uring and pread threads), the HTTP client, the ranged-read engine against the fake server,
# the device pipeline (staging ring, sim copy engine) and the disk cache (claims, locks,
# eviction). Its own tree, build-tsan/ (GCC, -fsanitize=thread, no libtorch or CUDA), building
# only those suites. Run by tools/test.sh.
# Suppressions (third-party frames only): tests/tsan.supp.
set -euo pipefail
cd "$(dirname "$0")/.."
tree="${COLDSTART_TSAN_TREE:-build-tsan}"
jobs="${COLDSTART_JOBS:-$(nproc)}"
args=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  "-DCMAKE_CXX_FLAGS=-fsanitize=thread" "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g"
  "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread" "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread"
  -DCOLDSTART_WITH_TORCH=OFF -DCOLDSTART_WITH_CUDA=OFF -DCOLDSTART_SANITIZE_TESTS=OFF)
if command -v ccache >/dev/null; then args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B "$tree" "${args[@]}" >/dev/null
ninja -C "$tree" -j"$jobs" fetch_test fetch_net_test remote_test device_loader_test cache_test | grep -v '^\[' || true
test "${PIPESTATUS[0]}" -eq 0
cd "$tree"
ctest -L tsan -j"$jobs" --output-on-failure --timeout 300
