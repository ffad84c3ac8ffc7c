"""tensorpress vs llm-compressor on the sample model, same calibration tokens, same evaluation, one run.

    python benchmarks/vs_llmcompressor.py [--peer-venv DIR] [--work DIR] [--bits 4 3] [--calib mix]
        [--eval NAME=FILE ...] [--ours default,rtn-w4g64]

Installs llm-compressor into its own venv if missing (torch==2.13.0 first, then llmcompressor), takes
128 windows of 512 tokens from --calib (kjv:calib by default, or the mix; seed 0) — the windows
tensorpress's recipes calibrate on, and ours are given the same spec —
and runs, alternating tools so drifting machine load hits both: the peer's RTN and GPTQ and our RTN,
GPTQ and AWQ+GPTQ at W4 g64 symmetric (and GPTQ/AWQ+GPTQ at 3 bits). Every output is then evaluated
by tensorpress's evaluation code on 48×512 tokens of kjv:eval and of every --eval text against the
base model (run once per text); ratios ours/peer per text.

The peer runs in float32 (its fastest path on a CPU without bf16 instructions) and saves in bf16, as
the base checkpoint is stored, so bits per weight compare. Compress seconds exclude interpreter start
and imports for both tools: model load + calibration + quantization + save.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import tensorpress
from tensorpress.calibration.windows import calibration_windows, eval_windows, load_tokenizer
from tensorpress.evaluation.metrics import evaluate_many
from tensorpress.formats.sizes import size_stats
from tensorpress.model.sample import ensure_sample

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "tensorpress"


def ensure_peer(venv: Path) -> Path:
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import llmcompressor"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"installing llm-compressor into {venv} …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "llmcompressor"], check=True)
    return py


def run_peer(py: Path, model: Path, calib: Path, out: Path, method: str, bits: int, group: int) -> float:
    cmd = [str(py), str(HERE / "peers" / "llmc_run.py"), str(model), str(calib), str(out)]
    cmd += ["--method", method, "--bits", str(bits), "--group-size", str(group)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llm-compressor {method} w{bits} failed:\n{proc.stderr[-3000:]}")
    timing = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(timing["total"])


def run_ours(model: Path, recipe: str, out: Path, calib: str, samples: int) -> float:
    from tensorpress.pipeline.recipe import load_recipe

    rec = load_recipe(recipe)
    rec.calibration.text, rec.calibration.texts, rec.calibration.samples = calib, None, samples
    res = tensorpress.compress(model, rec, out, force=True)
    return float(sum(res.seconds.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-venv", type=Path, default=CACHE / "peers" / "llmcompressor-venv")
    ap.add_argument("--work", type=Path, default=CACHE / "bench" / "vs_llmcompressor")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=48)
    ap.add_argument("--reuse", action="store_true", help="keep finished runs of an earlier invocation (timings kept)")
    ap.add_argument("--calib", default="kjv:calib", help="calibration spec of both tools")
    ap.add_argument("--eval", action="append", default=[], help="NAME=FILE: another eval text (repeatable)")
    ap.add_argument("--ours", default="", help="comma-separated extra recipes of ours (e.g. default)")
    args = ap.parse_args()

    sample = ensure_sample()
    model = Path(sample.model)
    py = ensure_peer(args.peer_venv)
    args.work.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(model)
    calib = calibration_windows(args.calib, tok, args.samples, args.seqlen, 0)
    calib_path = args.work / "calib.pt"
    torch.save(calib, calib_path)

    runs: list[dict] = []
    log = args.work / "runs.json"
    done = {(r["tool"], r["recipe"]): r for r in json.loads(log.read_text())} if args.reuse and log.exists() else {}

    def record(tool: str, recipe: str, out: Path, run) -> None:
        if (tool, recipe) in done and (out / "config.json").exists():
            t = done[(tool, recipe)]["seconds"]
        else:
            t = run()
        runs.append({"tool": tool, "recipe": recipe, "out": str(out), "seconds": t})
        log.write_text(
            json.dumps(runs + [r for k, r in done.items() if k not in {(x["tool"], x["recipe"]) for x in runs}])
        )
        print(f"{tool} {recipe}: {t:.1f} s", flush=True)

    def peer(method: str, bits: int) -> None:
        name = f"{method}-w{bits}g64"
        out = args.work / f"peer-{name}"
        record("llm-compressor", name, out, lambda: run_peer(py, model, calib_path, out, method, bits, 64))

    def ours(recipe: str) -> None:
        out = args.work / f"ours-{recipe}"
        record("tensorpress", recipe, out, lambda: run_ours(model, recipe, out, args.calib, args.samples))

    for recipe in filter(None, args.ours.split(",")):
        ours(recipe)
    if 4 in args.bits:
        peer("rtn", 4)
        ours("rtn-w4g64")
        peer("gptq", 4)
        ours("gptq-w4g64")
        ours("awq-gptq-w4g64")
    if 3 in args.bits:
        peer("gptq", 3)
        ours("gptq-w3g64")
        ours("awq-gptq-w3g64")

    texts = {"kjv:eval": "kjv:eval", **dict(item.split("=", 1) for item in args.eval)}
    t0 = time.perf_counter()
    outs = {f"{r['tool']}:{r['recipe']}": r["out"] for r in runs}
    evals = {
        k: evaluate_many(outs, model, eval_windows(t, tok, args.eval_windows, args.seqlen)) for k, t in texts.items()
    }
    print(f"evaluation of {len(runs)} outputs + base on {len(texts)} texts: {time.perf_counter() - t0:.0f} s")

    peer_time = {r["recipe"]: r["seconds"] for r in runs if r["tool"] == "llm-compressor"}
    rows = []
    for r in runs:
        key = f"{r['tool']}:{r['recipe']}"
        bits = r["recipe"].split("-")[-1][:2]  # w4 / w3
        ref = peer_time.get(r["recipe"]) or peer_time.get(f"gptq-{bits}g64")
        rows.append(
            {
                "tool": r["tool"],
                "recipe": r["recipe"],
                "ppl": {k: e[key]["ppl"] for k, e in evals.items()},
                "kl": {k: e[key]["kl"] for k, e in evals.items()},
                "top1": {k: e[key]["top1_agreement"] for k, e in evals.items()},
                "bits_per_weight": size_stats(r["out"])["bits_per_weight"],
                "seconds": r["seconds"],
                "time_ratio": r["seconds"] / ref if r["tool"] == "tensorpress" and ref else None,
            }
        )
    base = {k: e["base"]["ppl"] for k, e in evals.items()}
    print()
    print(f"calibration {args.samples}×{args.seqlen} of {args.calib}; eval {args.eval_windows}×{args.seqlen} per text")
    print("base ppl: " + ", ".join(f"{k} {v:.3f}" for k, v in base.items()))
    head = "| tool | recipe | bits/w | s | " + " | ".join(f"KL {k} | ppl {k}" for k in texts) + " | time ours/peer |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for x in rows:
        ratio = f"{x['time_ratio']:.2f}" if x["time_ratio"] is not None else "—"
        vals = " | ".join(f"{x['kl'][k]:.4f} | {x['ppl'][k]:.3f}" for k in texts)
        print(f"| {x['tool']} | {x['recipe']} | {x['bits_per_weight']:.3f} | {x['seconds']:.1f} | {vals} | {ratio} |")
    peer_gptq = next((x for x in rows if x["tool"] == "llm-compressor" and x["recipe"] == "gptq-w4g64"), None)
    if peer_gptq:
        print("KL ours / llm-compressor gptq-w4g64, per text (" + ", ".join(texts) + "):")
        for x in rows:
            if x["tool"] == "tensorpress":
                print(f"  {x['recipe']}: " + " / ".join(f"{x['kl'][k] / peer_gptq['kl'][k]:.3f}" for k in texts))
    (args.work / "results.json").write_text(json.dumps({"base_ppl": base, "rows": rows}, indent=2, default=str))
    print(f"\nresults: {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
