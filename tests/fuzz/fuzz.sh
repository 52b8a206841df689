#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of tests/fuzz/CMakeLists.txt. Exit 77 = skipped (no
# clang or no libFuzzer), which CTest reports as skipped.
#   fuzz.sh build TREE                  configure TREE with clang++ and build every target
#   fuzz.sh run TREE NAME RUNS [ARGS]   run fuzz_NAME for RUNS executions from the seeds
#                                       (tests/fuzz/seeds/NAME, TREE/seeds/NAME), with NAME.dict;
#                                       new inputs go to $FUZZ_CORPUS (default: a fresh temporary
#                                       folder), crash reproducers to TREE/artifacts/. ARGS go to
#                                       libFuzzer (e.g. -max_total_time=60).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cmd="${1:-}"
tree="${2:?usage: fuzz.sh build TREE | run TREE NAME RUNS [ARGS]}"

case "$cmd" in
  build)
    cxx="${COLDSTART_FUZZ_CXX:-clang++}"
    if ! command -v "$cxx" >/dev/null; then
      echo "fuzz.sh: $cxx not found; fuzz targets not built (apt-get install clang)"
      exit 77
    fi
    args=(-G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo)
    if command -v ccache >/dev/null; then args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
    cmake -S "$here" -B "$tree" "${args[@]}" >/dev/null
    if [[ "$(cat "$tree/libfuzzer.txt")" != "1" ]]; then
      echo "fuzz.sh: $cxx cannot link -fsanitize=fuzzer (libclang_rt.fuzzer missing?); fuzz targets not built"
      exit 77
    fi
    ninja -C "$tree" -j"${COLDSTART_JOBS:-$(nproc)}" | grep -v '^\[' || true
    exit "${PIPESTATUS[0]}"
    ;;
  run)
    name="${3:?fuzz.sh run: NAME missing}"
    runs="${4:?fuzz.sh run: RUNS missing}"
    shift 4
    bin="$tree/fuzz_$name"
    if [[ ! -x "$bin" ]]; then
      echo "fuzz.sh: $bin not built (no clang/libFuzzer: see the fuzz.build test)"
      exit 77
    fi
    corpus="${FUZZ_CORPUS:-}"
    cleanup=""
    if [[ -z "$corpus" ]]; then
      corpus="$(mktemp -d "${TMPDIR:-/tmp}/coldstart-fuzz-XXXXXX")"
      cleanup="$corpus"
    fi
    trap '[[ -n "$cleanup" ]] && rm -rf "$cleanup"' EXIT
    mkdir -p "$corpus" "$tree/artifacts"
    flags=(-runs="$runs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
           -artifact_prefix="$tree/artifacts/$name-")
    if [[ -f "$here/$name.dict" ]]; then flags+=(-dict="$here/$name.dict"); fi
    seeds=()
    for d in "$here/seeds/$name" "$tree/seeds/$name"; do
      if [[ -d "$d" ]]; then seeds+=("$d"); fi
    done
    "$bin" "${flags[@]}" "$@" "$corpus" "${seeds[@]}"
    ;;
  *)
    echo "usage: fuzz.sh build TREE | run TREE NAME RUNS [ARGS]" >&2
    exit 2
    ;;
esac
