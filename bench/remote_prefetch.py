#!/usr/bin/env python3
"""Remote prefetch benchmark (issue #3): one model served by nginx on loopback with a
per-connection rate cap (`limit_rate`, mimicking cloud storage's per-stream limit), copied to
local disk by coldstart and by the usual tools, side by side in one run:

  curl (one stream per file), aria2c -x16 -s16, rclone copy --multi-thread-streams N (best N of
  --rclone-streams), coldstart prefetch (capped), and coldstart prefetch against an uncapped
  nginx (the machine's own limit).

  python3 bench/remote_prefetch.py [--size 1GiB] [--cap 50000000] [--runs 2] [--json out.json]

Wall time is spawn to exit; CPU seconds and peak RSS come from wait4. Needs nginx, aria2c,
rclone and curl (tools/setup.sh --bench installs them).
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import require_tools, run_rusage, start_nginx, synth_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CS = os.path.join(ROOT, "build", "coldstart")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--cap", type=int, default=50_000_000, help="per-connection bytes/s (nginx limit_rate)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32, help="coldstart's concurrency judged against the targets")
    ap.add_argument("--extra-concurrency", default="", help="more coldstart rows, e.g. 32,64")
    ap.add_argument("--rclone-streams", default="4,8,16")
    ap.add_argument("--dir", default="/tmp/coldstart-bench-remote")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    require_tools("nginx", "aria2c", "rclone", "curl")
    os.makedirs(a.dir, exist_ok=True)
    docroot = os.path.join(a.dir, "www")
    model = synth_model(CS, docroot, a.size)
    files = sorted(f for f in os.listdir(model) if not f.startswith("."))
    total = sum(os.path.getsize(os.path.join(model, f)) for f in files)
    work = tempfile.mkdtemp(prefix="nginx-", dir=a.dir)
    ngx, ports = start_nginx(work, docroot, {"capped": a.cap, "uncapped": None})
    base = {k: f"http://127.0.0.1:{p}/model-{a.size}/" for k, p in ports.items()}
    dest_root = os.path.join(a.dir, "dest")
    urls_file = os.path.join(work, "urls.txt")
    with open(urls_file, "w") as f:
        f.write("".join(base["capped"] + n + "\n" for n in files))

    def fresh(name):
        d = os.path.join(dest_root, name.replace(" ", "_").replace("/", "_"))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    tools = {
        "curl (1 stream/file)": lambda d: ["sh", "-c", "cd \"$0\" && for u in $(cat \"$1\"); do curl -sf -O \"$u\" || exit 1; done",
                                           d, urls_file],
        "aria2c -x16 -s16": lambda d: ["aria2c", "-q", "-x16", "-s16", "-j4", "-k1M", "--file-allocation=none",
                                       "--allow-overwrite=true", "-d", d, "-i", urls_file],
    }
    for n in a.rclone_streams.split(","):
        tools[f"rclone --multi-thread-streams {n}"] = (lambda n: lambda d: [
            "rclone", "copy", "-q", "--http-url", base["capped"], ":http:", d, "--multi-thread-streams", n,
            "--multi-thread-cutoff", "1M", "--transfers", "4", "--checkers", "4"])(n)
    tools[f"coldstart prefetch (c={a.concurrency})"] = lambda d: [
        CS, "prefetch", base["capped"], d, "--json", "--progress", "off", "--concurrency", str(a.concurrency)]
    for c in filter(None, a.extra_concurrency.split(",")):
        tools[f"coldstart prefetch (c={c})"] = (lambda c: lambda d: [
            CS, "prefetch", base["capped"], d, "--json", "--progress", "off", "--concurrency", c])(c)
    tools["coldstart prefetch, uncapped"] = lambda d: [
        CS, "prefetch", base["uncapped"], d, "--json", "--progress", "off", "--concurrency", str(a.concurrency)]

    results = {k: [] for k in tools}
    try:
        for r in range(a.runs + 1):  # first round is a warm-up (nginx page cache, TCP)
            for name, mk in tools.items():
                d = fresh(name)
                res = run_rusage(mk(d))
                got = sum(os.path.getsize(os.path.join(d, f)) for f in files if os.path.exists(os.path.join(d, f)))
                if got != total:
                    sys.exit(f"{name}: copied {got} of {total} bytes")
                if r > 0:
                    results[name].append(res)
    finally:
        ngx.send_signal(signal.SIGQUIT)
        ngx.wait(timeout=10)
        # nginx's folder and every tool's last copy (1 GiB each by default); the model stays.
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dest_root, ignore_errors=True)
    print(f"\n{total / 2**30:.2f} GiB in {len(files)} files, per-connection cap {a.cap / 1e6:.0f} MB/s, "
          f"median of {a.runs} runs")
    print(f"  {'tool':36} {'MB/s':>8} {'wall s':>7} {'CPU s/GB':>9} {'peak RSS MiB':>12}")
    rows, med = [], {}
    for name, rs in results.items():
        wall = statistics.median(x["wall"] for x in rs)
        cpu = statistics.median(x["cpu"] for x in rs) / (total / 1e9)
        rss = max(x["rss_mib"] for x in rs)
        med[name] = (wall, cpu, rss)
        print(f"  {name:36} {total / wall / 1e6:8.1f} {wall:7.2f} {cpu:9.3f} {rss:12.0f}")
        rows.append({"tool": name, "bytes": total, "wall_s": wall, "cpu_s_per_gb": cpu, "peak_rss_mib": rss})
    cs_name = f"coldstart prefetch (c={a.concurrency})"
    peers = [n for n in tools if not n.startswith("coldstart")]
    best = min(peers, key=lambda n: med[n][0])
    cs_rate = total / med[cs_name][0]
    uncapped = total / med["coldstart prefetch, uncapped"][0]
    bound = min(a.concurrency * a.cap, uncapped)
    print(f"  best peer: {best}")
    print(f"  coldstart / best peer: {med[best][0] / med[cs_name][0]:.2f}x (target >= 1.5x)")
    print(f"  coldstart / min(concurrency x cap, uncapped) = {cs_rate / 1e6:.0f} / {bound / 1e6:.0f} MB/s = "
          f"{cs_rate / bound:.0%} (target >= 85%)")
    aria = med["aria2c -x16 -s16"][1]
    print(f"  CPU s/GB coldstart {med[cs_name][1]:.3f} vs aria2c {aria:.3f} (target: no worse)")
    print(f"  peak RSS coldstart {med[cs_name][2]:.0f} MiB (target <= 256 MiB)")
    if a.json:
        meta = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "cpus": os.cpu_count(),
                "cap_bytes_per_s": a.cap, "size": a.size, "concurrency": a.concurrency}
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
