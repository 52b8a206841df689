#!/usr/bin/env bash
# Every GPU check in one call, for a lent GPU machine (no apt there, so nothing is built there):
#   here:  tools/pack-gpu.sh            # .gpu-pack/: executables + their shared libraries
#   there: device `run` with carry [".gpu-pack"] and the command `bash tools/gpu-check.sh`
# It runs the CUDA engine tests, the engine tests on cuda (handles, tee, staging pool reuse run
# on the stand-in device everywhere; here the whole device suite runs with a GPU present), and
# the host-to-device benchmark (plain pinned cudaMemcpyAsync vs the engine, and a 4 GiB load
# through the fake GCS server), writing logs and JSON rows under $OUT (or ./gpu-check-out).
# Also transformers' first token on cuda:0 and coldstart's load of the same checkpoint onto it
# (issue #9). Budget: under 9 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
pack="${GPU_PACK:-.gpu-pack}"
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
if [[ ! -x "$pack/coldstart" ]]; then
  echo "gpu-check: $pack/ is missing: run tools/pack-gpu.sh here and carry it" >&2
  exit 2
fi
export LD_LIBRARY_PATH="$PWD/$pack/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1 || true
rc=0
timeout 180 "$pack/tests/cuda_engine_test" --gtest_output=json:"$out/cuda_engine_test.json" >"$out/cuda_engine_test.log" 2>&1 || rc=1
timeout 180 "$pack/tests/device_loader_test" --gtest_output=json:"$out/device_loader_test.json" >"$out/device_loader_test.log" 2>&1 || rc=1
timeout 120 "$pack/bench/gpu_h2d" 0 >"$out/gpu_h2d.json" 2>"$out/gpu_h2d.log" || rc=1
timeout 240 python3 bench/device_stream.py --device cuda:0 --size 4GiB --build "$pack" --json "$out/device_stream.json" \
  >"$out/device_stream.log" 2>&1 || rc=1
# Issue #9's peer on the GPU: transformers' time to the first token on cuda:0 (the machine's
# PyTorch and transformers), and coldstart's weights onto the GPU for the same checkpoint. The
# coldstart runtime itself needs a CUDA libtorch build of the plugin (README: "Building against a
# CUDA libtorch"), which this machine cannot build from a carried pack; recorded, not faked.
if python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  timeout 120 python3 bench/make_gemma3_270m.py /tmp/g270m >"$out/make_g270m.log" 2>&1 || rc=1
  for i in 1 2 3; do
    timeout 120 python3 bench/hf_first_token.py /tmp/g270m --prompt-ids 2,17,200,333,45,411,98,1000 --dtype bf16 \
      --device cuda:0 >>"$out/hf_first_token_cuda.jsonl" 2>>"$out/hf_first_token_cuda.log" || rc=1
    timeout 120 "$pack/coldstart" load /tmp/g270m --device cuda:0 --order layer --json \
      >>"$out/coldstart_load_g270m_cuda.jsonl" 2>>"$out/coldstart_load_g270m_cuda.log" || rc=1
  done
else
  echo "no CUDA PyTorch with transformers here" >"$out/hf_first_token_cuda.log"
fi
tail -n 3 "$out"/*.log
echo "gpu-check: exit $rc; results in $out/"
exit $rc
