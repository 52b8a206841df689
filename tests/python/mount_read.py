"""Reads safetensors files through a `coldstart mount` with the reference implementation (PyPI
`safetensors`, Rust core) and compares every tensor with the same file read from the origin.

The mounted file is mmapped, as safetensors.safe_open does; safe_open itself is used too when
numpy is installed (it needs a framework to hand tensors to).

usage: mount_read.py MOUNTED ORIGINAL [MOUNTED ORIGINAL ...]; exit 0 when all agree.
"""
import hashlib
import mmap
import sys

from safetensors import deserialize


def digests(data):
    return {name: (t["dtype"], list(t["shape"]), hashlib.sha256(bytes(t["data"])).hexdigest())
            for name, t in deserialize(data)}


failures = []
args = sys.argv[1:]
for mounted, original in zip(args[0::2], args[1::2]):
    with open(original, "rb") as f:
        want = digests(f.read())
    with open(mounted, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        got = digests(m[:])  # the bytes, read through the mapping
    if got != want:
        failures.append(f"{mounted}: tensors differ from {original}")
    try:
        import numpy  # noqa: F401
        from safetensors import safe_open
        with safe_open(mounted, framework="np") as f:
            for name in f.keys():
                if hashlib.sha256(f.get_tensor(name).tobytes()).hexdigest() != want[name][2]:
                    failures.append(f"{mounted}: safe_open tensor {name} differs")
    except ImportError:
        pass
    print(f"{mounted}: {len(got)} tensors agree with the origin")

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
