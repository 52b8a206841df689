#!/usr/bin/env python3
"""Mount benchmark (issue #8): a 1 GiB four-shard model served by nginx on loopback with a
per-connection cap (`limit_rate`, like cloud storage's per-stream limit), read by an mmap reader
in file order (what safetensors.safe_open and vLLM do) through each mount, side by side and
interleaved in one run:

  coldstart mount (cold cache)          spawn of `coldstart mount` to the reader's last byte
  rclone mount --vfs-cache-mode full    the gcsfuse-like peer, same measure
  coldstart prefetch                    spawn to exit (the copy the mount should keep up with)
  warm: coldstart mount over the cache the cold run filled, reader only (mount already up),
        against the same reader over a local copy: both in the page cache, then both out of it
        (posix_fadvise DONTNEED on those files only) so the bytes come from the disk
  two processes: two `coldstart mount`s of one fresh cache, a reader on each at once; the bytes
        nginx sent are counted (its access log) against the model's size

  python3 bench/mount_compare.py [--size 1GiB] [--cap 50000000] [--runs 2] [--json out.json] [--no-rclone] [--no-prime]

Needs nginx, rclone and FUSE (tools/setup.sh --bench installs the peers), and build/bench/seqread
(the primer; `ninja -C build coldstart seqread`).
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
from benchlib import require_tools, start_nginx, synth_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CS = os.path.join(ROOT, "build", "coldstart")
SEQREAD = os.path.join(ROOT, "build", "bench", "seqread")

# The reader: mmap each file in order and touch every page, 1 MiB at a time (a copy of each
# MiB, as a loader copying tensors out would). Prints seconds and bytes.
READER = r"""
import mmap, os, sys, time
t0 = time.perf_counter()
total = 0
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            continue
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            m.madvise(mmap.MADV_SEQUENTIAL)
            for off in range(0, size, 1 << 20):
                total += len(m[off:off + (1 << 20)])
print(time.perf_counter() - t0, total)
"""


class SentCounter:
    """Bytes nginx sent since the last reset (its access log, one number per request)."""

    def __init__(self, path):
        self.path = path
        self.offset = 0

    def reset(self):
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def sent(self):
        time.sleep(0.2)  # the last lines of finished requests
        with open(self.path) as f:
            f.seek(self.offset)
            return sum(int(x) for x in f.read().split() if x.isdigit())


def evict(root):
    """Drops the files under root from the page cache (their pages only: no global drop_caches)."""
    for d, _, names in os.walk(root):
        for n in names:
            fd = os.open(os.path.join(d, n), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def mounted(path):
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def unmount(path):
    if mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", path], stderr=subprocess.DEVNULL)


def read_files(paths):
    out = subprocess.run([sys.executable, "-c", READER, *paths], capture_output=True, text=True, check=True)
    secs, total = out.stdout.split()
    return float(secs), int(total)


def start_coldstart_mount(url, mnt, cache, concurrency, extra=()):
    p = subprocess.Popen([CS, "mount", url, mnt, "--cache-dir", cache, "--concurrency", str(concurrency),
                          "--progress", "off", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("mounted"):
        p.kill()
        sys.exit("coldstart mount failed: " + line + p.stderr.read())
    return p


def stop_coldstart_mount(p, mnt):
    p.send_signal(signal.SIGTERM)
    code = p.wait(timeout=60)
    if code != 0:
        sys.exit(f"coldstart mount exited {code}: {p.stderr.read()[-2000:]}")
    unmount(mnt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--cap", type=int, default=50_000_000, help="per-connection bytes/s (nginx limit_rate)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--dir", default="/tmp/coldstart-bench-mount")
    ap.add_argument("--json", default="")
    ap.add_argument("--mount-args", default="", help="extra `coldstart mount` flags, e.g. '--memory 320MiB'")
    ap.add_argument("--no-prime", action="store_true",
                    help="skip the primer (build/bench/seqread --keep over twice the shards) before each scenario")
    ap.add_argument("--no-rclone", action="store_true", help="skip rclone mount (22 s a round at the default cap)")
    a = ap.parse_args()
    require_tools("nginx", "rclone", "fusermount3")
    os.makedirs(a.dir, exist_ok=True)
    docroot = os.path.join(a.dir, "www")
    model = synth_model(CS, docroot, a.size)
    files = sorted(f for f in os.listdir(model) if not f.startswith("."))
    shards = [f for f in files if f.endswith(".safetensors")]
    total = sum(os.path.getsize(os.path.join(model, f)) for f in files)
    shard_bytes = sum(os.path.getsize(os.path.join(model, f)) for f in shards)
    work = tempfile.mkdtemp(prefix="run-", dir=a.dir)
    ngx, ports = start_nginx(work, docroot, {"capped": a.cap}, access_log=True)
    port = ports["capped"]
    url = f"http://127.0.0.1:{port}/model-{a.size}/"
    counter = SentCounter(os.path.join(work, "access.log"))
    mnt = [os.path.join(work, "mnt0"), os.path.join(work, "mnt1")]
    for m in mnt:
        os.makedirs(m, exist_ok=True)

    def cache(name):
        d = os.path.join(work, "cache-" + name)
        shutil.rmtree(d, ignore_errors=True)
        return d

    def coldstart_mount_cold():
        c = cache("cold")
        t0 = time.perf_counter()
        p = start_coldstart_mount(url, mnt[0], c, a.concurrency, a.mount_args.split())
        secs, got = read_files([os.path.join(mnt[0], f) for f in shards])
        wall = time.perf_counter() - t0
        # The warm read: a fresh mount of the cache just filled (no page cache of the old mount).
        stop_coldstart_mount(p, mnt[0])
        p = start_coldstart_mount(url, mnt[0], c, a.concurrency, ["--read-ahead", "none"])
        warm, got2 = read_files([os.path.join(mnt[0], f) for f in shards])
        stop_coldstart_mount(p, mnt[0])
        # Again with the cache's files out of the page cache: read from the disk.
        evict(c)
        p = start_coldstart_mount(url, mnt[0], c, a.concurrency, ["--read-ahead", "none"])
        warm_disk, got3 = read_files([os.path.join(mnt[0], f) for f in shards])
        stop_coldstart_mount(p, mnt[0])
        assert got == got2 == got3 == shard_bytes, (got, got2, got3, shard_bytes)
        return {"wall": wall, "warm_read": warm, "warm_read_disk": warm_disk}

    def rclone_mount():
        c = cache("rclone")
        t0 = time.perf_counter()
        p = subprocess.Popen(["rclone", "mount", ":http:", mnt[1], "--http-url", url, "--vfs-cache-mode", "full",
                              "--cache-dir", c, "--read-only", "--dir-cache-time", "1h"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not mounted(mnt[1]):
            if p.poll() is not None:
                sys.exit("rclone mount failed: " + p.stderr.read().decode())
            time.sleep(0.01)
        secs, got = read_files([os.path.join(mnt[1], f) for f in shards])
        wall = time.perf_counter() - t0
        subprocess.run(["fusermount3", "-u", mnt[1]], check=False)
        p.wait(timeout=60)
        unmount(mnt[1])
        shutil.rmtree(c, ignore_errors=True)
        assert got == shard_bytes
        return {"wall": wall}

    def prefetch():
        d = os.path.join(work, "local")
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([CS, "prefetch", url, d, "--progress", "off", "--concurrency", str(a.concurrency)], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        read_files([os.path.join(d, f) for f in shards])  # into the page cache, like the warm mount's cache
        local, got = read_files([os.path.join(d, f) for f in shards])
        evict(d)
        local_disk, got2 = read_files([os.path.join(d, f) for f in shards])
        assert got == got2 == shard_bytes
        return {"wall": wall, "local_read": local, "local_read_disk": local_disk}

    def two_processes():
        c = cache("two")
        counter.reset()
        t0 = time.perf_counter()
        ps = [start_coldstart_mount(url, m, c, a.concurrency, a.mount_args.split()) for m in mnt]
        readers = [subprocess.Popen([sys.executable, "-c", READER, *[os.path.join(m, f) for f in shards]],
                                    stdout=subprocess.PIPE, text=True) for m in mnt]
        outs = [r.communicate()[0].split() for r in readers]
        wall = time.perf_counter() - t0
        for p, m in zip(ps, mnt):
            stop_coldstart_mount(p, m)
        sent = counter.sent()
        shutil.rmtree(c, ignore_errors=True)
        assert all(int(o[1]) == shard_bytes for o in outs), outs
        return {"wall": wall, "origin_bytes": sent}

    scenarios = {"coldstart mount": coldstart_mount_cold, "rclone mount --vfs-cache-mode full": rclone_mount,
                 "coldstart prefetch": prefetch, "two coldstart mounts, one cache": two_processes}
    if a.no_rclone:
        del scenarios["rclone mount --vfs-cache-mode full"]
    results = {k: [] for k in scenarios}
    shard_paths = [os.path.join(model, f) for f in shards]
    try:
        for r in range(a.runs):
            for name, fn in scenarios.items():
                if not a.no_prime:
                    # This VM hands freed memory back to its host; the first process to touch it
                    # again pays for it (seconds of system time for 1 GiB of fresh page cache).
                    # A child faults in and frees twice the model first, so that cost falls on
                    # the primer, not on the scenario (as bench/runai_compare.py does).
                    subprocess.run([SEQREAD, "--keep", *shard_paths, *shard_paths], check=True,
                                   stdout=subprocess.DEVNULL)
                res = fn()
                print(f"round {r}: {name}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in res.items()), flush=True)
                results[name].append(res)
    finally:
        for m in mnt:
            unmount(m)
        ngx.send_signal(signal.SIGQUIT)
        ngx.wait(timeout=10)
        # The last round's caches and copies (2 GiB and more a run; the model in --dir/www stays
        # for the next run).
        shutil.rmtree(work, ignore_errors=True)

    med = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in results.items()}
    mount_rate = shard_bytes / med["coldstart mount"]["wall"]
    rclone_wall = med.get("rclone mount --vfs-cache-mode full", {"wall": float("nan")})["wall"]
    rclone_rate = shard_bytes / rclone_wall
    prefetch_rate = total / med["coldstart prefetch"]["wall"]
    warm = shard_bytes / med["coldstart mount"]["warm_read"]
    local = shard_bytes / med["coldstart prefetch"]["local_read"]
    warm_disk = shard_bytes / med["coldstart mount"]["warm_read_disk"]
    local_disk = shard_bytes / med["coldstart prefetch"]["local_read_disk"]
    origin_ratio = med["two coldstart mounts, one cache"]["origin_bytes"] / shard_bytes
    print(f"\n{shard_bytes / 2**30:.2f} GiB in {len(shards)} shards, per-connection cap {a.cap / 1e6:.0f} MB/s, "
          f"concurrency {a.concurrency}, median of {a.runs} interleaved rounds")
    print(f"  coldstart mount, cold:        {mount_rate / 1e6:8.1f} MB/s ({med['coldstart mount']['wall']:.2f} s)")
    print(f"  rclone mount (vfs full):      {rclone_rate / 1e6:8.1f} MB/s "
          f"({rclone_wall:.2f} s)")
    print(f"  coldstart prefetch:           {prefetch_rate / 1e6:8.1f} MB/s ({med['coldstart prefetch']['wall']:.2f} s)")
    print(f"  warm mount / local read, page cache: {warm / 1e6:8.1f} / {local / 1e6:.1f} MB/s")
    print(f"  warm mount / local read, from disk:  {warm_disk / 1e6:8.1f} / {local_disk / 1e6:.1f} MB/s")
    print(f"  mount / rclone mount:   {mount_rate / rclone_rate:.2f}x (target >= 4x)")
    print(f"  mount / prefetch:       {mount_rate / prefetch_rate:.2f}x (target >= 0.8x)")
    print(f"  warm / local:           {warm / local:.2f}x in the page cache, {warm_disk / local_disk:.2f}x from disk "
          f"(target >= 0.9x)")
    print(f"  two processes, origin bytes / model: {origin_ratio:.3f} (target <= 1.15)")
    if a.json:
        meta = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "cpus": os.cpu_count(),
                "cap_bytes_per_s": a.cap, "size": a.size, "concurrency": a.concurrency, "runs": a.runs,
                "command": " ".join(sys.argv)}
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "results": results, "median": med,
                       "ratios": {"mount_vs_rclone": mount_rate / rclone_rate, "mount_vs_prefetch": mount_rate / prefetch_rate,
                                  "warm_vs_local": warm / local, "warm_vs_local_disk": warm_disk / local_disk, "two_process_origin_ratio": origin_ratio}}, f, indent=1)


if __name__ == "__main__":
    main()
