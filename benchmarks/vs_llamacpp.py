"""tensorpress GGUF output vs llama.cpp's llama-quantize, judged by llama.cpp's own llama-perplexity.

For each type (Q8_0, Q4_0, Q4_K_M, Q3_K_M, Q2_K): llama-quantize of a BF16 GGUF of the sample model,
without and with an imatrix computed on exactly the windows tensorpress calibrates on (--calib, default
kjv:calib; `tensorpress calibration-text` writes them, 128 × 512 tokens), against `tensorpress compress
--recipe gguf-<type>` calibrated on the same spec. Every file is run through `llama-perplexity
--kl-divergence` against the BF16 file's logits on kjv:eval and on every --eval NAME=FILE (texts never
calibrated on), and through tensorpress's own evaluator. Prints file bytes, ppl, KL and the ratio
ours/peer; --json writes the rows.

llama.cpp's tools are built once from the `llama-cpp-python` sdist's vendored source (cmake, ~25 min
on 2 cores, GGML_NATIVE=OFF) into --build-dir, outside the repository; --llama-bin uses an existing
build. The BF16 reference GGUF is written by tensorpress's own GGUF writer (or --bf16-gguf).

    python benchmarks/vs_llamacpp.py --work /tmp/vsl --calib mix --eval novel=PATH [--types Q4_K_M,Q2_K]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import gguf
import yaml

TYPES = ["Q8_0", "Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K"]
CTX = 512


def sh(cmd: list[str], log: Path, env: dict | None = None) -> str:
    """Run a command, log its output, fail loudly (the benchmark's point is that llama.cpp runs them)."""
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        sys.exit(f"FAILED ({proc.returncode}) after {time.time() - t:.0f}s: {' '.join(cmd)}\n{tail}")
    return proc.stdout + proc.stderr


def build_llamacpp(build_dir: Path) -> Path:
    """llama-quantize / llama-imatrix / llama-perplexity from the llama-cpp-python sdist (cached)."""
    bins = build_dir / "src" / "vendor" / "llama.cpp" / "build" / "bin"
    if (bins / "llama-perplexity").is_file():
        return bins
    build_dir.mkdir(parents=True, exist_ok=True)
    dl = build_dir / "sdist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            "-d",
            str(dl),
            "llama-cpp-python",
        ],
        check=True,
    )
    sdist = next(dl.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tf:
        tf.extractall(build_dir, filter="data")
    src = next(p for p in build_dir.iterdir() if p.name.startswith("llama_cpp_python-"))
    src.rename(build_dir / "src")
    root = build_dir / "src" / "vendor" / "llama.cpp"
    flags = ["-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"]  # native builds SIGILL here
    subprocess.run(["cmake", "-B", "build", *flags], cwd=root, check=True)
    targets = ["llama-quantize", "llama-imatrix", "llama-perplexity"]
    subprocess.run(
        ["cmake", "--build", "build", "-j", str(os.cpu_count() or 2), "--target", *targets], cwd=root, check=True
    )
    return bins


def write_bf16_gguf(model: Path, dest: Path, kind2d: str = "BF16") -> None:
    """The unquantized reference: every tensor of the sample model as BF16 (norms F32), our writer. The
    values are the checkpoint's own (stored in bf16); `kind2d="F32"` holds the same values in a layout
    llama.cpp multiplies several times faster on CPUs without bf16 instructions."""
    import torch

    from tensorpress.formats.gguf_write import GGUFTensor, write_gguf
    from tensorpress.formats.safetensors_io import SafetensorsReader, weight_files

    config = json.loads((model / "config.json").read_text())
    with SafetensorsReader(weight_files(model)) as r:

        def tensors():
            for name in r.names():
                t = r.get(name)
                kind = kind2d if t.ndim == 2 else "F32"
                yield GGUFTensor(name, t.to(torch.float32).numpy(), gguf.GGMLQuantizationType[kind], tuple(t.shape))

        write_gguf(dest, config, model, tensors())


def perplexity(
    bins: Path, model: Path, text: Path, base_kld: Path, log: Path, chunks: int, make_base: bool = False
) -> dict:
    """llama-perplexity's ppl (and KL against base_kld); results are kept in the work folder, keyed by the
    file's size and mtime, the text and the chunk count, so a re-run only measures what changed."""
    cache = base_kld.parent / "perplexity-results.json"
    st = model.stat()
    key = f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}|{text}|{chunks}|{make_base}"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in known and (not make_base or base_kld.is_file()):
        return known[key]
    cmd = [str(bins / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", str(CTX)]
    cmd += ["--chunks", str(chunks), "-t", str(os.cpu_count() or 2), "-b", str(CTX)]
    cmd += ["--kl-divergence-base", str(base_kld)] + ([] if make_base else ["--kl-divergence"])
    out = sh(cmd, log)
    res: dict = {}
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out) or re.search(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", out)
    if m:
        res["ppl"] = float(m.group(1))
    m = re.search(r"Mean\s+KLD:\s*([0-9.]+)\s*±\s*([0-9.]+)", out)
    if m:
        res["kld"], res["kld_err"] = float(m.group(1)), float(m.group(2))
    if not make_base and "kld" not in res:
        sys.exit(f"llama-perplexity printed no KL divergence for {model}; see {log}")
    known[key] = res
    cache.write_text(json.dumps(known, indent=1))
    return res


def our_eval(path: Path, base: Path, text: str, windows: int) -> dict:
    """tensorpress's evaluator on the same file (a .gguf goes through its GGUF reader)."""
    import tensorpress

    m = tensorpress.evaluate(path, base=base, text=text, windows=windows, seqlen=CTX)
    return {"ppl": m["ppl"], "kl": m["kl"], "top1": m["top1_agreement"]}


def layer_bits_per_weight(path: Path) -> float:
    """Bits per weight of a GGUF file's decoder-layer matrices (what `--target-bpw` budgets)."""
    ts = [t for t in gguf.GGUFReader(str(path)).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    return 8 * sum(int(t.n_bytes) for t in ts) / sum(int(t.n_elements) for t in ts)


def ours_auto(args, sample, work: Path, typ: str, peer: Path) -> Path:
    """`gguf-auto` at the layer bits/weight of llama-quantize's `typ` file (embedding/head on typ's types)."""
    from tensorpress.pipeline.recipe import find_recipe

    out = work / f"ours-auto-{typ}"
    if not (out / "model.gguf").is_file():
        bpw = math.floor(layer_bits_per_weight(peer) * 1e4) / 1e4
        raw = yaml.safe_load(find_recipe("gguf-auto").read_text())
        raw["calibration"]["samples"] = args.calib_chunks
        raw["gguf"]["type"] = typ
        recipe = work / f"gguf-auto-{typ.lower()}.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, "-m", "tensorpress.cli.main", "compress", str(sample.model), "--recipe", str(recipe)]
        sh([*cmd, "--out", str(out), "--target-bpw", str(bpw)], work / "logs" / f"ours-auto-{typ}.log")
    return out / "model.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for files, logs and results")
    ap.add_argument("--build-dir", type=Path, default=Path.home() / ".cache" / "tensorpress" / "llamacpp")
    ap.add_argument("--llama-bin", type=Path, help="an existing llama.cpp build/bin")
    ap.add_argument("--bf16-gguf", type=Path, help="an existing BF16 GGUF of the sample model")
    ap.add_argument("--imatrix", type=Path, help="an existing imatrix of kjv:calib (128×512)")
    ap.add_argument("--ood-text", type=Path, help="an English text of another kind, never calibrated on")
    ap.add_argument("--eval", action="append", default=[], help="NAME=FILE: another eval text (repeatable)")
    ap.add_argument("--calib", default="kjv:calib", help="calibration spec of both tools (mix, kjv:calib, a file)")
    ap.add_argument("--no-kjv-eval", action="store_true", help="leave kjv:eval out of the eval texts")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--reference", choices=["BF16", "F32"], default="BF16", help="the unquantized file's matrices")
    ap.add_argument("--calib-chunks", type=int, default=128, help="calibration windows of 512, both tools")
    ap.add_argument("--eval-chunks", type=int, default=48, help="eval windows of 512")
    ap.add_argument("--no-ours-eval", action="store_true", help="skip tensorpress's own evaluator (slow on 2 cores)")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--auto-of", default="", help="types whose llama-quantize+imatrix layer bits/weight gguf-auto also gets"
    )
    ap.add_argument(
        "--peers", choices=["both", "imatrix"], default="both", help="llama-quantize without+with imatrix, or with only"
    )
    args = ap.parse_args()

    from tensorpress.model.sample import ensure_sample
    from tensorpress.pipeline.recipe import find_recipe

    sample = ensure_sample()
    work = args.work
    (work / "logs").mkdir(parents=True, exist_ok=True)
    bins = args.llama_bin or build_llamacpp(args.build_dir)
    bf16 = args.bf16_gguf or work / f"base-{args.reference.lower()}.gguf"
    if not bf16.is_file():
        write_bf16_gguf(sample.model, bf16, args.reference)
    texts = {} if args.no_kjv_eval else {"kjv:eval": sample.eval}
    if args.ood_text:
        texts["ood"] = args.ood_text
    for item in args.eval:
        name, _, path = item.partition("=")
        texts[name] = Path(path)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.calib)
    base_kld = {}
    base_ppl = {}
    for key, path in texts.items():
        base_kld[key] = work / f"base-{key.replace(':', '_')}.kld"
        base_ppl[key] = perplexity(
            bins, bf16, path, base_kld[key], work / "logs" / f"base-{key}.log", args.eval_chunks, True
        )["ppl"]
    imatrix = args.imatrix or work / f"imatrix-{slug}.gguf"
    if not imatrix.is_file():
        calib_text = work / f"calib-{slug}.txt"  # the very windows tensorpress calibrates on
        cmd = [sys.executable, "-m", "tensorpress.cli.main", "calibration-text", str(sample.model), "--force"]
        sh(
            [
                *cmd,
                "--text",
                args.calib,
                "--samples",
                str(args.calib_chunks),
                "--seqlen",
                str(CTX),
                "--out",
                str(calib_text),
            ],
            work / "logs" / f"calib-{slug}.log",
        )
        cmd = [str(bins / "llama-imatrix"), "-m", str(bf16), "-f", str(calib_text), "-c", str(CTX)]
        sh([*cmd, "--chunks", str(args.calib_chunks), "-o", str(imatrix)], work / "logs" / "imatrix.log")

    rows = []
    for typ in args.types.split(","):
        files = {
            "llama-quantize": work / f"peer-{typ}.gguf",
            "llama-quantize+imatrix": work / f"peer-{typ}-imat-{slug}.gguf",
        }
        if args.peers == "imatrix":
            del files["llama-quantize"]
        for tool, f in files.items():
            if not f.is_file():
                extra = ["--imatrix", str(imatrix)] if "imatrix" in tool else []
                sh([str(bins / "llama-quantize"), *extra, str(bf16), str(f), typ], work / "logs" / f"{f.stem}.log")
        ours_dir = work / f"ours-{typ}-{slug}"
        t = time.time()
        if not (ours_dir / "model.gguf").is_file():
            cmd = [sys.executable, "-m", "tensorpress.cli.main", "compress", str(sample.model)]
            recipe = work / f"gguf-{typ.lower()}.yaml"  # the shipped recipe, calibrated on the same windows
            raw = yaml.safe_load(find_recipe(f"gguf-{typ.lower()}").read_text())
            raw["calibration"]["samples"] = args.calib_chunks
            raw["calibration"]["text"] = args.calib
            recipe.write_text(yaml.safe_dump(raw))
            t0 = time.perf_counter()
            log = sh([*cmd, "--recipe", str(recipe), "--out", str(ours_dir)], work / "logs" / f"ours-{typ}.log")
            total = time.perf_counter() - t0
            m = re.search(r"gguf export: done in ([0-9.]+)s", log)
            export = float(m.group(1)) if m else float("nan")
            (ours_dir.parent / f"{ours_dir.name}.time.json").write_text(json.dumps({"total": total, "export": export}))
        files["tensorpress"] = ours_dir / "model.gguf"
        if typ in args.auto_of.split(","):
            files["tensorpress gguf-auto"] = ours_auto(args, sample, work, typ, files["llama-quantize+imatrix"])
        timing = ours_dir.parent / f"{ours_dir.name}.time.json"
        times = json.loads(timing.read_text()) if timing.is_file() else {}
        for tool, f in files.items():
            row = {"type": typ, "tool": tool, "bytes": f.stat().st_size}
            if tool == "tensorpress" and times:
                # the export's share: its seconds over those of the same run without it
                row["compress_s"], row["export_s"] = times["total"], times["export"]
            for key, path in texts.items():
                log = work / "logs" / f"ppl-{f.parent.name if f.name == 'model.gguf' else f.stem}-{key}.log"
                r = perplexity(bins, f, path, base_kld[key], log, args.eval_chunks)
                row[f"{key}:ppl"], row[f"{key}:kld"] = r["ppl"], r["kld"]
            if not args.no_ours_eval:
                target = f.parent if tool.startswith("tensorpress") else f
                row["tensorpress_eval"] = our_eval(target, sample.model, "kjv:eval", args.eval_chunks)
            rows.append(row)
        print(f"{typ}: done ({time.time() - t:.0f}s)", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"calib": args.calib, "base_ppl": base_ppl, "rows": rows}, indent=2))

    keys = list(texts)
    head = "| type | tool | MiB | " + " | ".join(f"{k} ppl | {k} KLD" for k in keys) + " | KLD ours/imatrix |"
    print(f"calibration: {args.calib}; base (BF16) ppl: {base_ppl}")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        peer = next(x for x in rows if x["type"] == r["type"] and x["tool"] == "llama-quantize+imatrix")
        ratio = (
            " / ".join(f"{r[f'{k}:kld'] / peer[f'{k}:kld']:.3f}" for k in keys)
            if r["tool"].startswith("tensorpress")
            else ""
        )
        vals = " | ".join(f"{r[f'{k}:ppl']:.3f} | {r[f'{k}:kld']:.4f}" for k in keys)
        print(f"| {r['type']} | {r['tool']} | {r['bytes'] / 2**20:.2f} | {vals} | {ratio} |")
    print("ppl rise over the base, tensorpress / llama-quantize+imatrix (≤ 1: ours moved less):")
    for r in rows:
        if r["tool"] != "tensorpress":
            continue
        peer = next(x for x in rows if x["type"] == r["type"] and x["tool"] == "llama-quantize+imatrix")
        rise = " / ".join(
            f"{(r[f'{k}:ppl'] - base_ppl[k]) / max(peer[f'{k}:ppl'] - base_ppl[k], 1e-9):.2f}" for k in keys
        )
        print(f"  {r['type']}: {rise}  ({' / '.join(keys)})")
    for r in rows:
        if "export_s" in r:
            share = r["export_s"] / (r["compress_s"] - r["export_s"])
            print(f"{r['type']}: export {r['export_s']:.1f}s of {r['compress_s']:.0f}s compress = +{100 * share:.1f}%")


if __name__ == "__main__":
    main()
