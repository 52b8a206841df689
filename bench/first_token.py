#!/usr/bin/env python3
"""Time from process start to the first token: `coldstart run` against transformers (issue 9).

  bench/first_token.py [--model DIR] [--runs 3] [--cap 50MB] [--json FILE]

MODEL: a random checkpoint with gemma-3-270m's published shape (bench/make_gemma3_270m.py; made
in /tmp/g270m when --model is not given), BF16, 536 MB. Needs a virtualenv with transformers
(COLDSTART_REF_PYTHON, default /work/refvenv/bin/python: `pip install transformers==5.24.0
torch==2.15.0`). Contenders, interleaved run by run so that background noise hits all alike:

  local (warm page cache):
    coldstart-f32    coldstart run DIR --prompt-ids ... --max-new-tokens 1 (CPU default: f32)
    coldstart-bf16   the same with --dtype bf16
    hf-bf16, hf-f32  bench/hf_first_token.py: import torch + transformers, from_pretrained, one
                     forward (eager attention), argmax
  remote (coldstart-fake-gcs on loopback, --cap per connection):
    coldstart-gs     coldstart run gs://bench/model ... (streams the weights, computes layer N
                     as soon as it has arrived); coldstart-gs-bf16 with --dtype bf16
    curl+hf          one curl stream per file into a folder, then hf_first_token.py (bf16):
                     the "copy at boot, then load" of the people we build for

Every time is seconds from that process's start (coldstart: its Timeline; transformers: the
kernel's start time of the Python process); curl+hf adds curl's wall time. Also printed: how much
of the load coldstart's first pass hides (load ready minus first token: the prompt's compute done
while later layers were still arriving shows as the first token landing soon after load ready).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import benchlib  # noqa: E402

PROMPT = "2,17,200,333,45,411,98,1000"


def run_json(cmd, env=None):
    r = benchlib.run_rusage(cmd, env=env)
    line = [l for l in r["out"].splitlines() if l.startswith("{")][-1]
    return json.loads(line), r


def coldstart_run(binary, src, dtype, env=None):
    j, r = run_json([binary, "run", src, "--prompt-ids", PROMPT, "--max-new-tokens", "1", "--ignore-eos",
                     "--json", "--dtype", dtype, "--progress", "off"], env)
    t = j["timeline"]
    return {"first_token_s": t["first_token"], "load_ready_s": t.get("load_ready", -1),
            "libtorch_s": t["libtorch_loaded"], "first_byte_s": t.get("first_byte", -1),
            "token": j["output_ids"][0], "wall_s": r["wall"], "rss_mib": r["rss_mib"]}


def hf_run(python, model, dtype):
    j, r = run_json([python, os.path.join(HERE, "hf_first_token.py"), model, "--prompt-ids", PROMPT, "--dtype", dtype])
    return {"first_token_s": j["total_s"], "import_s": j["import_s"], "load_s": j["load_s"],
            "forward_s": j["forward_s"], "token": j["first_token"], "wall_s": r["wall"], "rss_mib": r["rss_mib"]}


def curl_then_hf(python, endpoint, files, dest, dtype):
    os.makedirs(dest, exist_ok=True)
    t0 = time.perf_counter()
    for name in files:
        url = f"{endpoint}/storage/v1/b/bench/o/model%2F{name}?alt=media"
        subprocess.run(["curl", "-sSf", "-o", os.path.join(dest, name), url], check=True)
    copy = time.perf_counter() - t0
    h = hf_run(python, dest, dtype)
    h["copy_s"] = copy
    h["first_token_s"] = copy + h["first_token_s"]
    return h


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/tmp/g270m")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cap", default="50MB", help="per-connection rate of the fake GCS server (bytes/s)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--skip-remote", action="store_true")
    args = ap.parse_args()
    python = os.environ.get("COLDSTART_REF_PYTHON", "/work/refvenv/bin/python")
    binary = os.path.join(ROOT, "build", "coldstart")
    if not os.path.exists(os.path.join(args.model, "model.safetensors")):
        subprocess.run([python, os.path.join(HERE, "make_gemma3_270m.py"), args.model], check=True)
    files = sorted(f for f in os.listdir(args.model) if not f.startswith("."))

    work = tempfile.mkdtemp(prefix="cs-first-token-")
    bucket = os.path.join(work, "root", "bench", "model")
    os.makedirs(bucket)
    for f in files:
        os.symlink(os.path.abspath(os.path.join(args.model, f)), os.path.join(bucket, f))
    server = None
    env = dict(os.environ)
    if not args.skip_remote:
        log = open(os.path.join(work, "fake.log"), "w+")
        server = subprocess.Popen([os.path.join(ROOT, "build", "coldstart-fake-gcs"), "--root", os.path.join(work, "root"),
                                   "--rate-limit", args.cap, "--no-md5"], stdout=log, stderr=subprocess.STDOUT)
        endpoint = None
        for _ in range(200):
            log.seek(0)
            text = log.read()
            if "listening on" in text:
                endpoint = text.split("listening on ")[1].split()[0]
                break
            time.sleep(0.05)
        if not endpoint:
            sys.exit("the fake GCS server did not start")
        env.update({"STORAGE_EMULATOR_HOST": endpoint, "COLDSTART_METADATA": "off"})

    contenders = {
        "coldstart-f32": lambda: coldstart_run(binary, args.model, "f32"),
        "coldstart-bf16": lambda: coldstart_run(binary, args.model, "bf16"),
        "hf-bf16": lambda: hf_run(python, args.model, "bf16"),
        "hf-f32": lambda: hf_run(python, args.model, "f32"),
    }
    if server:
        contenders["coldstart-gs"] = lambda: coldstart_run(binary, "gs://bench/model", "f32", env)
        contenders["coldstart-gs-bf16"] = lambda: coldstart_run(binary, "gs://bench/model", "bf16", env)
        contenders["curl+hf-bf16"] = lambda: curl_then_hf(python, endpoint, files, os.path.join(work, "copy"), "bf16")
    rows = {k: [] for k in contenders}
    try:
        for name, fn in contenders.items():  # warm-up: page cache, pip's pyc files
            if not name.startswith("curl"):
                fn()
        for i in range(args.runs):
            for name, fn in contenders.items():
                r = fn()
                rows[name].append(r)
                print(f"run {i} {name:15s} first token {r['first_token_s']:.2f} s (token {r['token']})", file=sys.stderr)
    finally:
        if server:
            server.terminate()
            server.wait()

    med = {k: statistics.median(r["first_token_s"] for r in v) for k, v in rows.items()}
    print(f"\nfirst token, seconds from process start (median of {args.runs}; min-max)")
    for k, v in rows.items():
        xs = [r["first_token_s"] for r in v]
        print(f"  {k:15s} {med[k]:6.2f}  ({min(xs):.2f}-{max(xs):.2f})")
    print("ratios:")
    print(f"  hf-bf16 / coldstart-f32  = {med['hf-bf16'] / med['coldstart-f32']:.2f}x")
    print(f"  hf-bf16 / coldstart-bf16 = {med['hf-bf16'] / med['coldstart-bf16']:.2f}x")
    print(f"  hf-f32  / coldstart-f32  = {med['hf-f32'] / med['coldstart-f32']:.2f}x")
    if server:
        print(f"  curl+hf-bf16 / coldstart-gs = {med['curl+hf-bf16'] / med['coldstart-gs']:.2f}x")
        print(f"  curl+hf-bf16 / coldstart-gs-bf16 = {med['curl+hf-bf16'] / med['coldstart-gs-bf16']:.2f}x")
        for k in ("coldstart-gs", "coldstart-gs-bf16"):
            gs = rows[k]
            hidden = statistics.median(r["first_token_s"] - r["load_ready_s"] for r in gs)
            print(f"  {k}: first token - load ready = {hidden:+.3f} s (load ready "
                  f"{statistics.median(r['load_ready_s'] for r in gs):.2f} s, libtorch ready "
                  f"{statistics.median(r['libtorch_s'] for r in gs):.2f} s)")
    for k in ("coldstart-f32", "coldstart-bf16"):
        r = rows[k]
        print(f"  {k}: libtorch ready {statistics.median(x['libtorch_s'] for x in r):.2f} s, load ready "
              f"{statistics.median(x['load_ready_s'] for x in r):.2f} s, peak RSS "
              f"{statistics.median(x['rss_mib'] for x in r):.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "cap": args.cap, "rows": rows, "median_first_token_s": med}, f, indent=1)


if __name__ == "__main__":
    main()
