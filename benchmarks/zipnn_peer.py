"""ZipNN on one raw BF16 buffer, run inside ZipNN's own venv by benchmarks/lossless.py (no tensorpress import).

    /work/peers/zipnn-venv/bin/python benchmarks/zipnn_peer.py BUFFER.bin --threads 1 2 --repeats 3

Prints one JSON object: coded size, per-thread-count encode/decode wall seconds (and decode CPU
seconds) of every repeat, and whether
every decode was bit-exact. ZipNN's compress() overwrites its input, so every repeat gets a fresh copy
(made outside the timed region).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import zipnn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("buffer", type=Path)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = args.buffer.read_bytes()
    out = {"size": None, "enc": {}, "dec": {}, "dec_cpu": {}, "exact": True}
    out["version"] = getattr(zipnn, "__version__", "?")
    for k in args.threads:
        z = zipnn.ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=k)
        enc, dec, cpu = [], [], []
        for _ in range(args.repeats):
            buf = bytearray(data)  # compress() overwrites its input
            t0 = time.perf_counter()
            coded = z.compress(buf)
            enc.append(time.perf_counter() - t0)
            t0, c0 = time.perf_counter(), time.process_time()
            back = z.decompress(coded)
            dec.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            out["exact"] &= bytes(back) == data
            out["size"] = len(coded)
        out["enc"][k], out["dec"][k], out["dec_cpu"][k] = enc, dec, cpu
    print(json.dumps(out))


if __name__ == "__main__":
    main()
