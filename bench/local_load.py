#!/usr/bin/env python3
"""Local-disk load benchmark (issue #2): coldstart vs a sequential read() into one reused
buffer (bytes discarded), a sequential read() into one fresh buffer that keeps every byte (what
a loader has to do: the kernel zeroes each new page), and dd bs=16M, side by side in one run,
warm page cache and (where dropping caches is permitted) cold. Reports GB/s, CPU seconds and
peak RSS per tool and the ratios.

  python3 bench/local_load.py [--size 2GiB] [--runs 3] [--dir /tmp/coldstart-bench] [--json out.json]

Each process is timed from spawn to exit (wall), its CPU time and peak RSS come from wait4.
coldstart is run twice: `load` (bytes end as libtorch tensors: libtorch is loaded, in parallel
with the reads) and `load --no-torch` (bytes end in the host arena).
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
BUILD = os.path.join(ROOT, "build")


def run(cmd):
    r = run_rusage(cmd)
    r["maxrss_mib"] = r["rss_mib"]
    return r


def drop_caches():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm(files):
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/coldstart-bench")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    cs = os.path.join(BUILD, "coldstart")
    seqread = os.path.join(BUILD, "bench", "seqread")
    model = os.path.join(a.dir, "model-" + a.size)
    if not os.path.exists(os.path.join(model, "config.json")):
        subprocess.run([cs, "synth", model, "--preset", "gemma-3-1b", "--size", a.size, "--seed", "1"], check=True)
    files = sorted(os.path.join(model, f) for f in os.listdir(model) if f.endswith(".safetensors"))
    total = sum(os.path.getsize(f) for f in files)

    tools = {
        "coldstart load": [cs, "load", model, "--json"],
        "coldstart load --no-torch": [cs, "load", model, "--json", "--no-torch"],
        "read() 16 MiB buffer": [seqread, str(16 << 20)] + files,
        "read() keeping the bytes": [seqread, "--keep"] + files,
        "dd bs=16M": ["sh", "-c", "for f; do dd if=\"$f\" of=/dev/null bs=16M status=none; done", "dd"] + files,
    }
    modes = ["warm"]
    if drop_caches():
        modes.append("cold")
    else:
        print("(cannot write /proc/sys/vm/drop_caches: cold-cache runs skipped)")
    rows = []
    for mode in modes:
        # Warm-up run of every tool, then interleaved repeats so drift hits all alike.
        for name, cmd in tools.items():
            warm(files)
            run(cmd)
        results = {name: [] for name in tools}
        for _ in range(a.runs):
            for name, cmd in tools.items():
                if mode == "cold":
                    drop_caches()
                else:
                    warm(files)
                r = run(cmd)
                row = {"mode": mode, "tool": name, "bytes": total, "wall_s": r["wall"], "cpu_s": r["cpu"],
                       "maxrss_mib": r["maxrss_mib"]}
                if name.startswith("coldstart"):
                    j = json.loads(r["out"])
                    row["internal_s"] = j["seconds"]
                    row["direct_bytes"] = j["io"]["direct_bytes"]
                results[name].append(row)
                rows.append(row)
        print(f"\n{mode} page cache, {total / 2**30:.2f} GiB in {len(files)} files, median of {a.runs}:")
        print(f"  {'tool':28} {'GB/s':>7} {'wall s':>7} {'CPU s':>6} {'peak RSS MiB':>12}")
        med = {}
        for name, rs in results.items():
            wall = statistics.median(r["wall_s"] for r in rs)
            cpu = statistics.median(r["cpu_s"] for r in rs)
            rss = max(r["maxrss_mib"] for r in rs)
            med[name] = wall
            print(f"  {name:28} {total / wall / 1e9:7.2f} {wall:7.3f} {cpu:6.2f} {rss:12.0f}")
        for cs_name in ("coldstart load", "coldstart load --no-torch"):
            for peer in ("read() 16 MiB buffer", "read() keeping the bytes", "dd bs=16M"):
                print(f"  ratio {cs_name} / {peer}: {med[peer] / med[cs_name]:.2f}x throughput")
        rss = max(r["maxrss_mib"] for r in results["coldstart load --no-torch"])
        print(f"  peak RSS of coldstart --no-torch - model bytes: {rss - total / 2**20:+.0f} MiB")
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "size": a.size}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
