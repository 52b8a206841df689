#!/usr/bin/env python3
"""Long libFuzzer runs of every tests/fuzz target (the short ones are `ctest -L fuzz`).

Builds the clang fuzz tree (tests/fuzz/fuzz.sh build), runs each target for a fixed number of
executions from its seeds, one after the other, and prints executions, exec/s, coverage, new
corpus inputs and crashes. New inputs accumulate in TREE/corpus/NAME (later runs start from
them); crash reproducers go to TREE/artifacts/. Results: --json (rows appended to `runs`).

  python3 bench/fuzz.py                                # 6M header + 4M index (10M)
  python3 bench/fuzz.py --runs shard_index=500000 --default-runs 1000000
Exit status 1 when any target crashed (a real bug: fix it, and commit the reproducer into
tests/fuzz/seeds/NAME/ with a regression test).
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ_SH = os.path.join(ROOT, "tests", "fuzz", "fuzz.sh")
DEFAULT_RUNS = {"safetensors_header": 6_000_000, "shard_index": 4_000_000}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=os.path.join(ROOT, "build", "fuzz"), help="clang build tree")
    ap.add_argument("--runs", action="append", default=[], metavar="NAME=N",
                    help="executions for one target (repeatable); defaults: %s" % DEFAULT_RUNS)
    ap.add_argument("--default-runs", type=int, default=1_000_000,
                    help="executions for targets without a default or --runs (default 1M)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these targets")
    ap.add_argument("--seed", type=int, default=1, help="libFuzzer -seed (default 1)")
    ap.add_argument("--json", help="append the results to this JSON file (bench/results-fuzz.json)")
    ap.add_argument("--no-build", action="store_true", help="use the tree as it is")
    args = ap.parse_args()

    runs = dict(DEFAULT_RUNS)
    for spec in args.runs:
        name, _, n = spec.partition("=")
        runs[name] = int(n)
    if not args.no_build:
        rc = subprocess.call([FUZZ_SH, "build", args.tree])
        if rc != 0:
            sys.exit("fuzz.py: building the fuzz tree failed (%d; 77 = no clang/libFuzzer)" % rc)
    targets = sorted(f[len("fuzz_"):] for f in os.listdir(args.tree)
                     if f.startswith("fuzz_") and os.access(os.path.join(args.tree, f), os.X_OK))
    if args.only:
        targets = [t for t in targets if t in args.only]
    if not targets:
        sys.exit("fuzz.py: no fuzz targets in %s" % args.tree)

    rows = []
    for name in targets:
        n = runs.get(name, args.default_runs)
        corpus = os.path.join(args.tree, "corpus", name)
        os.makedirs(corpus, exist_ok=True)
        before = len(os.listdir(corpus))
        env = dict(os.environ, FUZZ_CORPUS=corpus)
        t0 = time.monotonic()
        p = subprocess.run([FUZZ_SH, "run", args.tree, name, str(n), "-seed=%d" % args.seed],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace")
        wall = time.monotonic() - t0
        out = p.stdout
        stat = dict(re.findall(r"^stat::(\w+):\s+(\d+)", out, re.M))
        cov = re.findall(r"cov: (\d+) ft: (\d+)", out)
        crashes = re.findall(r"Test unit written to (\S+)", out)
        execs = int(stat.get("number_of_executed_units", 0))
        row = {
            "target": name, "runs_requested": n, "executions": execs,
            "exec_per_s": round(execs / wall) if wall > 0 else 0,
            "libfuzzer_exec_per_s": int(stat.get("average_exec_per_sec", 0)),
            "wall_s": round(wall, 1), "cov": int(cov[-1][0]) if cov else 0,
            "features": int(cov[-1][1]) if cov else 0,
            "new_units": int(stat.get("new_units_added", 0)),
            "corpus_files": len(os.listdir(corpus)), "corpus_files_before": before,
            "peak_rss_mb": int(stat.get("peak_rss_mb", 0)),
            "exit": p.returncode, "crashes": crashes,
        }
        if p.returncode != 0:
            tail = "\n".join(out.splitlines()[-60:])
            print("fuzz.py: %s exited %d\n%s" % (name, p.returncode, tail), file=sys.stderr)
        rows.append(row)
        print("%-20s %11d execs %8d exec/s %7.1f s  cov %5d  ft %6d  corpus %5d  crashes %d" % (
            name, execs, row["exec_per_s"], wall, row["cov"], row["features"], row["corpus_files"], len(crashes)),
            flush=True)
    total = sum(r["executions"] for r in rows)
    print("total %d executions, %d crashing target(s)" % (total, sum(1 for r in rows if r["exit"] != 0)))

    if args.json:
        doc = {"runs": []}
        if os.path.exists(args.json):
            with open(args.json) as f:
                doc = json.load(f)
        doc["runs"].append({
            "meta": {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
                     "machine": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
                     "seed": args.seed, "command": " ".join(sys.argv)},
            "rows": rows, "total_executions": total})
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    sys.exit(1 if any(r["exit"] != 0 for r in rows) else 0)


if __name__ == "__main__":
    main()
