"""Shared helpers of the benchmark harnesses."""
import os
import subprocess
import sys
import time


def run_rusage(cmd, check=True, env=None):
    """Runs cmd; returns wall seconds (spawn to exit), CPU seconds (user + system, and each) and peak
    RSS from wait4."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if check and code != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed ({code}): {err.decode()[-2000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime, "sys": ru.ru_stime,
            "rss_mib": ru.ru_maxrss / 1024.0,
            "out": out.decode(), "code": code}
