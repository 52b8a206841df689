"""Cross-checks coldstart against the reference safetensors implementation (PyPI `safetensors`,
the Rust core Hugging Face ships), which nobody here wrote.

1. Strictness: every file of our malformed corpus and seeded mutations that the reference
   rejects, coldstart rejects too; where both accept, they agree on names, dtypes, shapes and
   offsets. Files only coldstart rejects are listed (we are stricter by design: duplicate keys,
   unknown fields).
2. Files the reference writes (every dtype, scalars, zero-size tensors, metadata) load in
   coldstart with byte-identical tensors (SHA-256 per tensor).
3. Models coldstart synthesises read in the reference with the same tensor digests.

usage: crosscheck.py COLDSTART_BIN WRITE_CORPUS_BIN
"""
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile

from safetensors import deserialize, serialize

COLDSTART, WRITE_CORPUS = sys.argv[1], sys.argv[2]
failures = []


def run(*args):
    p = subprocess.run([COLDSTART, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def reference_tensors(data):
    """name -> (dtype, shape, sha256) per the reference, or raises."""
    out = {}
    for name, t in deserialize(data):
        out[name] = (t["dtype"], list(t["shape"]), hashlib.sha256(bytes(t["data"])).hexdigest())
    return out


def check_strictness(tmp):
    corpus = os.path.join(tmp, "corpus")
    os.makedirs(corpus)
    subprocess.run([WRITE_CORPUS, corpus], check=True)
    stricter, agreed_reject, agreed_accept = [], 0, 0
    for fn in sorted(os.listdir(corpus)):
        path = os.path.join(corpus, fn)
        with open(path, "rb") as f:
            data = f.read()
        try:
            ref = reference_tensors(data)
        except Exception:  # noqa: BLE001 - any reference error counts as a rejection
            ref = None
        code, out, err = run("inspect", "--json", path)
        if ref is None:
            if code == 0:
                failures.append(f"{fn}: reference rejects it but coldstart accepted it")
            else:
                agreed_reject += 1
                if err.count("\n") != 1:
                    failures.append(f"{fn}: error is not one line: {err!r}")
            continue
        if code != 0:
            stricter.append(f"{fn}: {err.strip()}")
            continue
        agreed_accept += 1
        ours = {t["name"]: (t["dtype"], t["shape"]) for t in json.loads(out)["tensors"]}
        theirs = {n: (d, s) for n, (d, s, _) in ref.items()}
        if ours != theirs:
            failures.append(f"{fn}: coldstart {ours} != reference {theirs}")
    print(f"strictness: {agreed_reject} rejected by both, {agreed_accept} accepted by both, "
          f"{len(stricter)} rejected by coldstart only")
    for s in stricter:
        print("  stricter:", s)


DTYPES = {  # reference serialize() name -> (safetensors dtype, element size)
    "float64": ("F64", 8), "float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2),
    "int64": ("I64", 8), "int32": ("I32", 4), "int16": ("I16", 2), "int8": ("I8", 1),
    "uint64": ("U64", 8), "uint32": ("U32", 4), "uint16": ("U16", 2), "uint8": ("U8", 1),
    "bool": ("BOOL", 1), "float8_e4m3fn": ("F8_E4M3", 1), "float8_e5m2": ("F8_E5M2", 1),
}


def check_reference_written(tmp):
    rng = random.Random(20261121)
    tensors = {}
    for i, (tname, (_, size)) in enumerate(DTYPES.items()):
        for shape in ([], [0], [3, 5], [2, 0, 4], [rng.randint(1, 300)]):
            n = 1
            for d in shape:
                n *= d
            data = bytes(rng.getrandbits(8) for _ in range(n * size))
            if tname == "bool":
                data = bytes(b & 1 for b in data)
            tensors[f"t{i}.{tname}.{len(shape)}.{n}"] = {"dtype": tname, "shape": shape, "data": data}
    blob = serialize(tensors, metadata={"format": "pt", "origin": "reference"})
    path = os.path.join(tmp, "reference.safetensors")
    with open(path, "wb") as f:
        f.write(blob)
    expected = {n: h for n, (_, _, h) in reference_tensors(blob).items()}
    for engine in ("uring", "pread"):
        code, out, err = run("load", path, "--digest", "sha256", "--json", "--io-engine", engine)
        if code != 0:
            failures.append(f"reference-written file: coldstart load failed: {err.strip()}")
            return
        got = {t["name"]: t["sha256"] for t in json.loads(out)["tensors"]}
        if got != expected:
            failures.append(f"reference-written file ({engine}): digests differ")
    print(f"reference-written: {len(expected)} tensors of {len(DTYPES)} dtypes byte-identical")


def check_synth_read_by_reference(tmp):
    model = os.path.join(tmp, "synth")
    code, _, err = run("synth", model, "--size", "4MiB", "--shards", "3", "--seed", "5")
    if code != 0:
        failures.append(f"synth failed: {err}")
        return
    expected = {}
    for fn in sorted(os.listdir(model)):
        if fn.endswith(".safetensors"):
            with open(os.path.join(model, fn), "rb") as f:
                expected.update({n: h for n, (_, _, h) in reference_tensors(f.read()).items()})
    code, out, err = run("load", model, "--digest", "sha256", "--json")
    got = {t["name"]: t["sha256"] for t in json.loads(out)["tensors"]} if code == 0 else {}
    if got != expected:
        failures.append("synthesised model: coldstart and reference digests differ")
    print(f"synth read by reference: {len(expected)} tensors agree")


with tempfile.TemporaryDirectory() as tmp:
    check_strictness(tmp)
    check_reference_written(tmp)
    check_synth_read_by_reference(tmp)

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
