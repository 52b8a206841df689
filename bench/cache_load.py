#!/usr/bin/env python3
"""Disk cache benchmark (issue #8): a model in a (fake) GCS bucket loaded through the disk cache,
side by side in one run with a load of the same files from a local folder.

  python3 bench/cache_load.py [--size 1GiB] [--runs 5] [--dir /tmp/coldstart-bench-cache] [--json out.json]

Rows (all `coldstart load --no-torch`, bytes end in the host arena):
  cold:   gs:// with an empty cache (fetch from the fake server on loopback, fill the cache)
  warm:   gs:// with the cache full: one listing request, then local reads checked by CRC32C
  local:  the same files from a local folder (the target: warm >= 0.9x local)
  two:    two processes at once on an empty cache; origin bytes / model bytes (target <= 1.15)

The warm and local rows are interleaved round by round so that the VM's memory noise (the first
process to touch fresh memory after another pays seconds of system time) hits both alike; the
median is reported. Page cache is warm for both (the cache files and the local files were read
just before).
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import run_rusage  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CS = os.path.join(ROOT, "build", "coldstart")
FAKE = os.path.join(ROOT, "build", "coldstart-fake-gcs")


def parse_size(text):
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for u, m in units.items():
        if text.endswith(u):
            return int(float(text[: -len(u)]) * m)
    return int(text)


def start_fake(root):
    p = subprocess.Popen([FAKE, "--root", root, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    if "listening on" not in line:
        p.kill()
        sys.exit("fake GCS server did not start: " + line)
    return p, line.split()[-1].strip()


def media_bytes(endpoint):
    with urllib.request.urlopen(endpoint + "/_fake/stats") as r:
        return json.load(r)["media_bytes_sent"]


def reset_stats(endpoint):
    req = urllib.request.Request(endpoint + "/_fake/stats", method="DELETE")
    urllib.request.urlopen(req).read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/coldstart-bench-cache")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    size = parse_size(a.size)
    shutil.rmtree(a.dir, ignore_errors=True)
    model = os.path.join(a.dir, "gcs", "bkt", "m")
    # As the other benches: gemma-3-1b tensors (a few hundred), not the tiny preset's thousands.
    subprocess.run([CS, "synth", model, "--preset", "gemma-3-1b", "--size", a.size, "--shards", "4", "--seed", "3"],
                   check=True, stdout=subprocess.DEVNULL)
    model_bytes = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model))
    fake, endpoint = start_fake(os.path.join(a.dir, "gcs"))
    env = dict(os.environ, STORAGE_EMULATOR_HOST=endpoint, COLDSTART_METADATA="off")
    cache = os.path.join(a.dir, "cache")
    rows = {"cold": [], "warm": [], "local": []}
    try:
        def load(src, *extra):
            r = run_rusage([CS, "load", src, "--no-torch", "--json", "--progress", "off", *extra], env=env)
            j = json.loads(r["out"])
            return {"wall": r["wall"], "cpu": r["cpu"], "rss_mib": r["rss_mib"], "gb_per_s": j["bytes"] / r["wall"] / 1e9,
                    "hit": j.get("cache", {}).get("hit_bytes", 0), "fetched": j.get("network", {}).get("requests", 0)}

        for r in range(a.runs):
            shutil.rmtree(cache, ignore_errors=True)
            rows["cold"].append(load("gs://bkt/m", "--cache-dir", cache))
            # warm and local alternate which goes first
            order = [("warm", ("gs://bkt/m", "--cache-dir", cache)), ("local", (model,))]
            if r % 2:
                order.reverse()
            load(*order[0][1])
            load(*order[1][1])  # page cache warm for both
            for name, args in order:
                rows[name].append(load(*args))
        # Two processes at once on an empty cache.
        shutil.rmtree(cache, ignore_errors=True)
        reset_stats(endpoint)
        cmd = [CS, "load", "gs://bkt/m", "--no-torch", "--json", "--progress", "off", "--cache-dir", cache]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        for p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                sys.exit("two-process load failed: " + err.decode())
        two_ratio = media_bytes(endpoint) / model_bytes
    finally:
        fake.kill()

    def med(name, key):
        return statistics.median(x[key] for x in rows[name])

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()} {os.cpu_count()} cpus",
        "command": "python3 bench/cache_load.py " + " ".join(sys.argv[1:]),
        "model_bytes": model_bytes,
        "runs": a.runs,
        "median_gb_per_s": {k: med(k, "gb_per_s") for k in rows},
        "median_wall_s": {k: med(k, "wall") for k in rows},
        "median_cpu_s": {k: med(k, "cpu") for k in rows},
        "warm_over_local": med("warm", "gb_per_s") / med("local", "gb_per_s"),
        "two_processes_origin_over_model": two_ratio,
        "rows": rows,
    }
    for k in rows:
        print(f"{k:6s} {med(k, 'gb_per_s'):6.2f} GB/s  wall {med(k, 'wall'):6.3f} s  cpu {med(k, 'cpu'):6.3f} s")
    print(f"warm cache / local load: {result['warm_over_local']:.2f}x (target >= 0.9)")
    print(f"two processes on one empty cache: origin sent {two_ratio:.3f}x the model (target <= 1.15)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
