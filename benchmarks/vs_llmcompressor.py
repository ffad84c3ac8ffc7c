"""tensorpress vs llm-compressor on the sample model, same calibration tokens, same evaluation, one run.

    python benchmarks/vs_llmcompressor.py [--peer-venv DIR] [--work DIR] [--bits 4 3]

Installs llm-compressor into its own venv if missing (torch==2.13.0 first, then llmcompressor), takes
128 windows of 512 tokens from kjv:calib (seed 0) — the windows tensorpress's recipes calibrate on —
and runs, alternating tools so drifting machine load hits both: the peer's RTN and GPTQ and our RTN,
GPTQ and AWQ+GPTQ at W4 g64 symmetric (and GPTQ/AWQ+GPTQ at 3 bits). Every output is then evaluated
by tensorpress's evaluation code on 48×512 tokens of kjv:eval against the base model (run once).

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


def run_ours(model: Path, recipe: str, out: Path) -> float:
    res = tensorpress.compress(model, recipe, out, force=True)
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
    args = ap.parse_args()

    sample = ensure_sample()
    model = Path(sample.model)
    py = ensure_peer(args.peer_venv)
    args.work.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(model)
    calib = calibration_windows("kjv:calib", tok, args.samples, args.seqlen, 0)
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
        record("tensorpress", recipe, out, lambda: run_ours(model, recipe, out))

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

    t0 = time.perf_counter()
    evals = evaluate_many({f"{r['tool']}:{r['recipe']}": r["out"] for r in runs}, model, _eval_tokens(tok, args))
    print(f"evaluation of {len(runs)} outputs + base: {time.perf_counter() - t0:.0f} s", flush=True)

    peer_time = {r["recipe"]: r["seconds"] for r in runs if r["tool"] == "llm-compressor"}
    rows = []
    for r in runs:
        m = evals[f"{r['tool']}:{r['recipe']}"]
        bits = r["recipe"].split("-")[-1][:2]  # w4 / w3
        ref = peer_time.get(r["recipe"]) or peer_time.get(f"gptq-{bits}g64")
        rows.append(
            {
                "tool": r["tool"],
                "recipe": r["recipe"],
                "ppl": m["ppl"],
                "kl": m["kl"],
                "top1": m["top1_agreement"],
                "bits_per_weight": size_stats(r["out"])["bits_per_weight"],
                "seconds": r["seconds"],
                "time_ratio": r["seconds"] / ref if r["tool"] == "tensorpress" and ref else None,
            }
        )
    base = evals["base"]
    print()
    print(f"base ppl {base['ppl']:.3f} on {base['tokens']} tokens ({args.eval_windows}×{args.seqlen} of kjv:eval)")
    print(
        f"| {'tool':<14} | {'recipe':<16} | {'ppl':>7} | {'KL':>6} | {'top-1':>6} | {'bits/w':>6} | {'s':>6} "
        "| ours/peer |"
    )
    print("|" + "|".join("-" * w for w in (16, 18, 9, 8, 8, 8, 8, 11)) + "|")
    for x in rows:
        ratio = f"{x['time_ratio']:.2f}" if x["time_ratio"] is not None else "—"
        print(
            f"| {x['tool']:<14} | {x['recipe']:<16} | {x['ppl']:>7.3f} | {x['kl']:>6.4f} | {x['top1']:>6.2%} "
            f"| {x['bits_per_weight']:>6.3f} | {x['seconds']:>6.1f} | {ratio:>9} |"
        )
    (args.work / "results.json").write_text(json.dumps({"base": base, "rows": rows}, indent=2, default=str))
    print(f"\nresults: {args.work / 'results.json'}")


def _eval_tokens(tok, args) -> torch.Tensor:
    return eval_windows("kjv:eval", tok, args.eval_windows, args.seqlen)


if __name__ == "__main__":
    main()
