#!/usr/bin/env python3
"""Device streaming benchmark (issue #4), on the stand-in device or a real GPU.

1. Overlap: a model served over loopback (the fake GCS server) is loaded three ways in one run:
   fetch only (`load --no-torch`, bytes to host memory), copy only (the device's copy engine
   alone: bytes / bandwidth on `sim`, `gpu_h2d` plain cudaMemcpyAsync on CUDA), and end to end
   (`load --device DEV`, fetch and copies overlapped through the staging ring).
   Target: end-to-end <= 1.1 x max(fetch only, copy only).
2. Memory: a large model (default 8 GiB) streamed to `sim --sim-discard` with a fixed staging
   budget; target: peak RSS <= staging budget + 128 MiB.

  python3 bench/device_stream.py [--device sim|cuda:0] [--size 2GiB] [--big 8GiB]
                                 [--sim-bandwidth 2GB] [--staging 512MiB] [--runs 3] [--json out.json]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import run_rusage  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CS = os.path.join(ROOT, "build", "coldstart")
FAKE = os.path.join(ROOT, "build", "coldstart-fake-gcs")
GPU_H2D = os.path.join(ROOT, "build", "bench", "gpu_h2d")


def parse_bytes(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
    num = "".join(c for c in text if c.isdigit() or c == ".")
    return int(float(num) * units[text[len(num):].strip().upper()])


def synth(path, size, shards):
    if not os.path.exists(os.path.join(path, "config.json")):
        subprocess.run([CS, "synth", path, "--preset", "gemma-3-1b", "--size", size, "--shards", str(shards), "--seed", "3"],
                       check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="sim")
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--big", default="8GiB")
    ap.add_argument("--sim-bandwidth", default="2GB", help="decimal units: 2GB = 2e9 bytes/s")
    ap.add_argument("--staging", default="512MiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/coldstart-bench-device")
    ap.add_argument("--discard", action="store_true", help="end to end with --sim-discard (checksum, no copy)")
    ap.add_argument("--json", default="")
    ap.add_argument("--build", default="", help="folder with coldstart, coldstart-fake-gcs and bench/gpu_h2d "
                                                "(default build/; tools/pack-gpu.sh makes one to carry to a GPU machine)")
    a = ap.parse_args()
    global CS, FAKE, GPU_H2D
    if a.build:
        CS, FAKE = os.path.join(a.build, "coldstart"), os.path.join(a.build, "coldstart-fake-gcs")
        GPU_H2D = os.path.join(a.build, "bench", "gpu_h2d")
    os.makedirs(a.dir, exist_ok=True)
    root = os.path.join(a.dir, "buckets")
    model_name = "model-" + a.size
    synth(os.path.join(root, "bkt", model_name), a.size, 4)
    log = open(os.path.join(a.dir, "fake.log"), "w")
    server = subprocess.Popen([FAKE, "--root", root, "--port", "0", "--no-md5"], stdout=subprocess.PIPE, stderr=log, text=True)
    endpoint = server.stdout.readline().strip().split()[-1]
    env_args = ["--endpoint", endpoint, "--anonymous"]
    src = "gs://bkt/" + model_name
    bw = parse_bytes(a.sim_bandwidth)
    dev = ["--device", a.device]
    if a.device == "sim":
        dev += ["--sim-bandwidth", str(bw)] + (["--sim-discard"] if a.discard else [])
    rows = []
    try:
        # Warm-up: the fake server hashes each object once; TCP and page cache settle.
        run_rusage([CS, "load", src, "--no-torch", "--json"] + env_args)
        fetch, e2e = [], []
        for _ in range(a.runs):
            r = run_rusage([CS, "load", src, "--no-torch", "--json"] + env_args)
            j = json.loads(r["out"])
            fetch.append(j["seconds"])
            r = run_rusage([CS, "load", src, "--json", "--staging-bytes", a.staging] + dev + env_args)
            j = json.loads(r["out"])
            e2e.append(j)
        total = e2e[0]["bytes"]
        if a.device == "sim":
            copy_only = total / bw
            copy_how = f"sim engine alone: bytes / {bw / 1e9:.2f} GB/s"
        else:
            out = subprocess.run([GPU_H2D], capture_output=True, text=True).stdout
            plain = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            best = max((p for p in plain if p.get("mode") == "plain"), key=lambda p: p.get("gbps_median", 0), default=None)
            if best is None:
                sys.exit("gpu_h2d measured nothing: " + out)
            copy_only = total / (best["gbps_median"] * 1e9)
            copy_how = f"plain pinned cudaMemcpyAsync at {best['gbps_median']:.2f} GB/s (gpu_h2d)"
        f = statistics.median(fetch)
        e = statistics.median(x["seconds"] for x in e2e)
        h2d = statistics.median(x["phases"]["h2d_gb_per_s"] for x in e2e)
        bound = max(f, copy_only)
        print(f"\noverlap on {a.device}: {total / 2**30:.2f} GiB from loopback GCS, median of {a.runs}")
        print(f"  fetch only (load --no-torch)      {f:7.3f} s  {total / f / 1e9:6.2f} GB/s")
        print(f"  copy only ({copy_how}) {copy_only:7.3f} s")
        print(f"  end to end (load --device {a.device})   {e:7.3f} s  {total / e / 1e9:6.2f} GB/s"
              f"  (host-to-device phase {h2d:.2f} GB/s)")
        print(f"  end-to-end / max(fetch, copy) = {e / bound:.2f} (target <= 1.10)")
        print(f"  peak staging {max(x['staging']['peak_bytes'] for x in e2e) / 2**20:.0f} MiB of "
              f"{e2e[0]['staging']['budget_bytes'] / 2**20:.0f} MiB")
        rows.append({"test": "overlap", "device": a.device, "bytes": total, "fetch_only_s": f, "copy_only_s": copy_only,
                     "end_to_end_s": e, "ratio": e / bound, "h2d_gb_per_s": h2d})
    finally:
        server.terminate()
        server.wait(timeout=10)

    big = os.path.join(a.dir, "big-" + a.big)
    synth(big, a.big, 4)
    r = run_rusage([CS, "load", big, "--device", "sim", "--sim-discard", "--staging-bytes", a.staging, "--json",
                    "--sim-bandwidth", "25GB"])
    j = json.loads(r["out"])
    budget = j["staging"]["budget_bytes"] / 2**20
    print(f"\nmemory: {j['bytes'] / 2**30:.2f} GiB local model to sim --sim-discard, staging budget {budget:.0f} MiB")
    print(f"  peak RSS {r['rss_mib']:.0f} MiB = budget {r['rss_mib'] - budget:+.0f} MiB (target <= +128 MiB); "
          f"{j['bytes'] / r['wall'] / 1e9:.2f} GB/s, peak staging {j['staging']['peak_bytes'] / 2**20:.0f} MiB")
    rows.append({"test": "memory", "bytes": j["bytes"], "peak_rss_mib": r["rss_mib"], "staging_budget_mib": budget,
                 "wall_s": r["wall"]})
    if a.json:
        meta = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "cpus": os.cpu_count()}
        with open(a.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
