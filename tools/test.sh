#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, builds, runs every CTest suite
# (the short fuzz runs included: their clang tree is build/fuzz), then the ThreadSanitizer suites
# in build-tsan/ (tools/tsan.sh).
# The reference `safetensors` package (PyPI) goes into .venv for the cross-check; without
# network access that one test reports itself skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --no-build
if [[ ! -x .venv/bin/python ]]; then python3 -m venv .venv; fi
if ! .venv/bin/python -c "import safetensors" 2>/dev/null; then
  # Pinned: 0.4.x's serialize() takes plain dicts, which the cross-check uses.
  .venv/bin/pip install -q --disable-pip-version-check "safetensors==0.4.5" \
    || echo "test.sh: could not install safetensors; the reference cross-check will be skipped"
fi
bash tools/setup.sh
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 600)
bash tools/tsan.sh
