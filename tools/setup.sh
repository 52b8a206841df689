#!/usr/bin/env bash
# Installs the Debian packages coldstart needs, only those missing (idempotent), then
# configures and builds into build/. Used by tools/demo.sh and tools/test.sh.
#   tools/setup.sh            build and test deps + build
#   tools/setup.sh --bench    also the peers the benchmarks run (nginx, aria2, rclone, curl)
#   tools/setup.sh --no-build only install packages
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_PKGS=(build-essential cmake ninja-build pkg-config git
  liburing-dev libfuse3-dev fuse3 libcurl4-openssl-dev libssl-dev zlib1g-dev libzstd-dev
  nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev libtorch-dev
  libsentencepiece-dev libpcre2-dev libutf8proc-dev  # runtime/'s tokenizers (coldstart::text)
  python3 python3-venv curl
  clang libclang-rt-14-dev)  # clang and libFuzzer: the fuzz targets (tests/fuzz), tested by CTest
BENCH_PKGS=(nginx-light aria2 rclone curl time)
# What the tests use beyond the build: headless Chromium renders `coldstart bench --html`'s page
# and libpng reads its screenshot (tests/bench/report_browser_test.cpp; skipped without them).
TEST_PKGS=(chromium libpng-dev)

want=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}")
build=1
for arg in "$@"; do
  case "$arg" in
    --bench) want+=("${BENCH_PKGS[@]}") ;;
    --no-build) build=0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ((build)); then
  cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  if [[ -x .venv/bin/python ]]; then cmake_args+=("-DCOLDSTART_TEST_PYTHON=$PWD/.venv/bin/python"); fi
  # ccache, where installed, makes a re-build of unchanged files free (paths relative to the
  # checkout, so a fresh clone elsewhere still hits).
  if command -v ccache >/dev/null; then
    cmake_args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR="$PWD"
  fi
  cmake -S . -B build "${cmake_args[@]}" >/dev/null
  # 2 cores: libtorch translation units need ~1 GiB each; -j2 is safe on 8 GiB and up.
  ninja -C build -j"${COLDSTART_JOBS:-$(nproc)}" | grep -v '^\[' || true
  test -x build/coldstart
fi
