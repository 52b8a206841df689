#!/usr/bin/env bash
# Runs crosscheck.py with the Python that has the reference `safetensors` package
# (CS_TEST_PYTHON, set up by tools/test.sh). Exit 77 = skipped (CTest SKIP_RETURN_CODE).
set -euo pipefail
py="${CS_TEST_PYTHON:-}"
if [[ -z "$py" ]] || ! "$py" -c "import safetensors" 2>/dev/null; then
  echo "SKIP: no Python with the reference safetensors package (tools/test.sh installs one into .venv)"
  exit 77
fi
exec "$py" "$(dirname "$0")/crosscheck.py" "$@"
