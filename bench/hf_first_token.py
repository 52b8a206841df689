#!/usr/bin/env python3
"""transformers' time to first token, the peer of `coldstart run` in the benchmark (issue 9):
from_pretrained + one forward of the prompt, on CPU, imports included, timed from process start.

  /work/refvenv/bin/python bench/hf_first_token.py MODEL_DIR --prompt-ids 2,17,200 [--dtype bf16|f32]

Prints one JSON line: import_s (process start to torch and transformers imported), load_s
(from_pretrained), forward_s (one forward of the prompt and the argmax), total_s (process start to
the first token), first_token, and start_s (process start to this script's first line: the
interpreter's own start-up, already inside import_s). Process start is the kernel's start time of
this process (/proc/self/stat, 10 ms ticks) on CLOCK_BOOTTIME, so a caller's exec is counted.
"""
import os
import time


def _since_process_start():
    with open("/proc/self/stat") as f:
        stat = f.read()
    start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, after "pid (comm)"
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


_SCRIPT = time.perf_counter()
_START = _SCRIPT - _since_process_start()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def main():
    imported = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (from_pretrained(device_map=...))")
    args = parser.parse_args()
    try:
        ids = [int(x) for x in args.prompt_ids.split(",")]
    except ValueError:
        sys.exit(f"--prompt-ids: not a comma-separated list of integers: {args.prompt_ids!r}")
    if not ids:
        sys.exit("--prompt-ids: empty")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    kwargs = {} if args.device == "cpu" else {"device_map": args.device}
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, attn_implementation="eager", **kwargs)
    model.eval()
    loaded = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits
        first = int(torch.argmax(logits[0, -1]))  # .item() waits for the device
    done = time.perf_counter()
    print(json.dumps({
        "start_s": round(_SCRIPT - _START, 4),
        "import_s": round(imported - _START, 4),
        "load_s": round(loaded - imported, 4),
        "forward_s": round(done - loaded, 4),
        "total_s": round(done - _START, 4),
        "first_token": first,
        "dtype": args.dtype,
        "device": args.device,
        "prompt_ids": ids,
        "threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
