#!/usr/bin/env python3
"""The seeds' cold starts at their sizes, from `coldstart bench` runs on loopback (issue #10).

  bench/seeds_model.py FIT.json CHECK.json

FIT.json and CHECK.json are `coldstart bench --json` reports of the same scenarios on two model
sizes under the same caps. Each (scenario, peer) is modelled as

    time(S) = fixed + S / net_rate [+ S / local_rate for copy-then-load style scenarios]

fitted from FIT's median and phases (net_rate: the model bytes over the copy/prefetch phase, or
over every bytes-moving phase of a streaming scenario; local_rate: over the local load after a
copy; fixed: what is left of the median); the model then predicts CHECK's medians, and the error
is printed. Then the same model, with its rates replaced by the assumed rates of the
seeds' machines (stated below, every one an assumption, not a measurement), gives their time to
ready at their model sizes.
"""
import json
import statistics
import sys

GB = 1e9

# Each scenario's rate at the seeds' machines: min(streams x per-stream rate, link, CPU-bound
# rate). Assumptions (none measured here):
#  - one GCS stream: 100 MB/s (the order of gsutil/curl single-stream reads from a regional bucket;
#    USE-CASES.md's field report of gcsfuse reading 7.2 GB in over 13 minutes is 9 MB/s, far less);
#  - the instance's network: Cloud Run L4 (8 vCPU) 1.5 GB/s; a GKE node's local SSD 2 GB/s;
#  - coldstart's CPU-bound rate scales with vCPUs from the loopback fit (2 vCPU here);
#  - the local load of a copied model runs at the local disk (tmpfs on Cloud Run: memory speed,
#    the CPU-bound load rate).
SEEDS = [
    # (who, model, bytes, machine, vcpus, link B/s)
    ("1. fine-tuned Gemma 3 4B, Cloud Run L4, bucket mounted", "gemma-3-4b", 8.6 * GB, "Cloud Run L4, 8 vCPU", 8, 1.5 * GB),
    ("2. vLLM Gemma 2 9B, Cloud Run L4, NFS copy / mount", "gemma-2-9b", 18.5 * GB, "Cloud Run L4, 8 vCPU", 8, 1.5 * GB),
    ("4. Qwen2-Audio-7B, Cloud Run, copied to /tmp", "qwen2-audio-7b", 16.8 * GB, "Cloud Run L4, 8 vCPU", 8, 1.5 * GB),
    ("5. the same on a GKE node (local SSD, 16 vCPU)", "gemma-3-4b", 8.6 * GB, "GKE n2-16, local SSD", 16, 2.0 * GB),
]
STREAM = 100e6
STREAMS = {("copy-then-load", "curl"): 1, ("mount-then-read", "rclone"): 1,
           ("parallel-copy-then-load", "aria2c"): 16, ("parallel-copy-then-load", "rclone"): 16,
           ("prefetch-then-load", "coldstart"): 32, ("load", "coldstart"): 32,
           ("mount-then-read", "coldstart"): 32}
MOVING = {"copy", "fetch", "load", "prefetch", "read", "mount", "first_byte"}
TWO_PHASE = {"copy-then-load", "parallel-copy-then-load", "prefetch-then-load"}


def medians(report):
    by = {}
    for r in report["rows"]:
        if r["ok"] and r["total_s"] > 0 and r["replica"] < 0:
            by.setdefault((r["scenario"], r["peer"]), []).append(r)
    return by


def fit(report):
    out = {}
    size = report["model_bytes"]
    for key, rows in medians(report).items():
        med = statistics.median(r["total_s"] for r in rows)
        def span(r, names):
            return sum(p["end_s"] - p["start_s"] for p in r["phases"] if p["name"] in names)
        if key[0] in TWO_PHASE:
            net = statistics.median(span(r, {"copy", "prefetch"}) or r["total_s"] for r in rows)
            local = statistics.median(span(r, {"load"}) or 1e-9 for r in rows)
            m = {"net_rate": size / net, "local_rate": size / local}
        else:
            moving = statistics.median(span(r, MOVING) or r["total_s"] for r in rows)
            m = {"net_rate": size / moving, "local_rate": None}
        m["fixed"] = max(0.0, med - predict(m, size, 0))
        m["median"] = med
        out[key] = m
    return out


def predict(m, size, fixed=None):
    t = (m["fixed"] if fixed is None else fixed) + size / m["net_rate"]
    if m["local_rate"]:
        t += size / m["local_rate"]
    return t


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    fit_r, check_r = (json.load(open(p)) for p in sys.argv[1:])
    model = fit(fit_r)
    print(f"fit: {fit_r['command']} ({fit_r['model_bytes'] / GB:.2f} GB)")
    print(f"check: {check_r['command']} ({check_r['model_bytes'] / GB:.2f} GB)\n")
    print("| scenario | peer | fitted network MB/s | fitted local MB/s | fixed s | predicted s | measured s | error |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, rows in sorted(medians(check_r).items()):
        if key not in model:
            continue
        m = model[key]
        pred = predict(m, check_r["model_bytes"])
        meas = statistics.median(r["total_s"] for r in rows)
        local = f"{m['local_rate'] / 1e6:.0f}" if m["local_rate"] else "-"
        print(f"| {key[0]} | {key[1]} | {m['net_rate'] / 1e6:.0f} | {local} | {m['fixed']:.2f} | {pred:.2f} | {meas:.2f} | "
              f"{100 * (pred - meas) / meas:+.0f} % |")

    # coldstart's CPU-bound rate per vCPU, from the 2-vCPU loopback fit (the local load after a copy).
    cpu_per_vcpu = model[("prefetch-then-load", "coldstart")]["local_rate"] / 2
    print("\nThe seeds at their sizes (seconds to weights in memory; assumptions in this script's header):\n")
    keys = [k for k in STREAMS if k in model]
    print("| seed | model | GB | machine | " + " | ".join(f"{s} ({p})" for s, p in keys) + " |")
    print("| --- | --- | ---: | --- | " + " | ".join("---:" for _ in keys) + " |")
    for who, name, size, machine, vcpus, link in SEEDS:
        cells = []
        for k in keys:
            m = dict(model[k])
            m["net_rate"] = min(STREAMS[k] * STREAM, link, cpu_per_vcpu * vcpus)
            if m["local_rate"]:
                m["local_rate"] = cpu_per_vcpu * vcpus
            cells.append(f"{predict(m, size):.0f}")
        print(f"| {who} | {name} | {size / GB:.1f} | {machine} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
