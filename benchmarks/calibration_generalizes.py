"""Calibration that generalizes: tensorpress against both peers on kjv:eval and five texts nothing calibrated on.

    python benchmarks/calibration_generalizes.py --work DIR [--types Q4_0,Q4_K_M,Q3_K_M,Q2_K] [--skip-llmc]

Runs, with the same calibration windows for every tool (`tensorpress calibration-text` writes them):
1. `vs_llamacpp.py --calib mix`: shipped gguf-* recipes (the mix is their default) against llama-quantize
   with an imatrix of the mix; KL divergence judged by llama-perplexity against the BF16 file.
2. the same with `--calib kjv:calib` (a user's own narrow text, for both tools).
3. `vs_llmcompressor.py --calib mix --ours default`: `default`, RTN w4g64 and llm-compressor's GPTQ w4g64.
Evaluation: 48×512 tokens of kjv:eval and of each text of benchmarks/heldout.py (a novel, Chinese prose, Go
code, Shakespeare's plays, Sphinx's docs). Prints one table per part and a PASS/FAIL line per target of
the issue; every part keeps its results in DIR, so a rerun only measures what is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from heldout import heldout_texts

HERE = Path(__file__).resolve().parent


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}); see {log}")


def gguf_part(args, texts: dict[str, Path], calib: str) -> dict:
    work = args.work / f"gguf-{calib.replace(':', '_')}"
    out = work / "results.json"
    if not out.is_file() or args.rerun:
        work.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(HERE / "vs_llamacpp.py"), "--work", str(work), "--calib", calib]
        cmd += ["--types", args.types, "--peers", "imatrix", "--no-ours-eval", "--json", str(out), "--reference", "F32"]
        cmd += ["--calib-chunks", str(args.samples), "--eval-chunks", str(args.windows)]
        cmd += [f"--eval={k}={v}" for k, v in texts.items()]
        run(cmd, args.work / f"gguf-{calib.replace(':', '_')}.log")
    return json.loads(out.read_text())


def llmc_part(args, texts: dict[str, Path]) -> dict:
    work = args.work / "llmc-mix"
    out = work / "results.json"
    if not out.is_file() or args.rerun:
        cmd = [sys.executable, str(HERE / "vs_llmcompressor.py"), "--work", str(work), "--calib", "mix"]
        cmd += ["--bits", "4", "--ours", "default", "--samples", str(args.samples), "--eval-windows", str(args.windows)]
        cmd += [f"--eval={k}={v}" for k, v in texts.items()]
        run(cmd, args.work / "llmc-mix.log")
    return json.loads(out.read_text())


def gguf_table(res: dict, keys: list[str]) -> list[tuple[str, str, float, float]]:
    """Prints the table; returns (type, text, KL ratio, ppl-rise ratio) per type and text."""
    rows = res["rows"]
    base = res["base_ppl"]
    out = []
    print(f"\n### GGUF, both tools calibrated on {res['calib']} (llama-perplexity KLD; ppl, base ppl)\n")
    print(
        "| type | text | base ppl | llama-quantize+imatrix KLD / ppl | tensorpress KLD / ppl "
        "| KLD ours/peer | ppl rise ours/peer |"
    )
    print("|---|---|---|---|---|---|---|")
    for typ in dict.fromkeys(r["type"] for r in rows):
        peer = next(r for r in rows if r["type"] == typ and r["tool"] == "llama-quantize+imatrix")
        ours = next(r for r in rows if r["type"] == typ and r["tool"] == "tensorpress")
        for k in keys:
            ratio = ours[f"{k}:kld"] / peer[f"{k}:kld"]
            rise = (ours[f"{k}:ppl"] - base[k]) / max(peer[f"{k}:ppl"] - base[k], 1e-9)
            out.append((typ, k, ratio, rise))
            print(
                f"| {typ} | {k} | {base[k]:.3f} | {peer[f'{k}:kld']:.4f} / {peer[f'{k}:ppl']:.3f} | "
                f"{ours[f'{k}:kld']:.4f} / {ours[f'{k}:ppl']:.3f} | {ratio:.3f} | {rise:.2f} |"
            )
    sizes = {
        r["type"]: (r["bytes"], next(x["bytes"] for x in rows if x["type"] == r["type"] and x["tool"] != r["tool"]))
        for r in rows
        if r["tool"] == "tensorpress"
    }
    print("\nfile bytes ours / peer: " + ", ".join(f"{t} {a:,} / {b:,}" for t, (a, b) in sizes.items()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--types", default="Q4_0,Q4_K_M,Q3_K_M,Q2_K")
    ap.add_argument("--samples", type=int, default=128, help="calibration windows of 512, every tool")
    ap.add_argument("--windows", type=int, default=48, help="eval windows of 512 per text")
    ap.add_argument("--skip-llmc", action="store_true")
    ap.add_argument("--skip-narrow", action="store_true", help="leave out the kjv:calib part")
    ap.add_argument("--rerun", action="store_true", help="rerun parts that have results")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    texts = heldout_texts()
    keys = ["kjv:eval", *texts]
    verdicts = []
    mix = gguf_table(gguf_part(args, texts, "mix"), keys)
    for typ, text, ratio, rise in mix:
        if text != "kjv:eval":
            verdicts.append((ratio <= 0.6, f"{typ} mix, {text}: KLD {ratio:.3f}× peer (≤ 0.6)"))
            verdicts.append((rise <= 1.0, f"{typ} mix, {text}: ppl rise {rise:.2f}× peer's (≤ 1)"))
    if not args.skip_narrow:
        narrow = gguf_table(gguf_part(args, texts, "kjv:calib"), keys)
        for typ, text, ratio, _ in narrow:
            if text != "kjv:eval":
                verdicts.append((ratio <= 0.9, f"{typ} kjv:calib, {text}: KLD {ratio:.3f}× peer (≤ 0.9)"))
    if not args.skip_llmc:
        res = llmc_part(args, texts)
        rows = {r["recipe"] if r["tool"] == "tensorpress" else "llmc:" + r["recipe"]: r for r in res["rows"]}
        print("\n### compressed-tensors, calibrated on the mix (tensorpress's evaluator: KL, ppl)\n")
        print(
            "| text | base ppl | llm-compressor gptq-w4g64 | tensorpress rtn-w4g64 | tensorpress default "
            "| default / peer |"
        )
        print("|---|---|---|---|---|---|")
        peer, rtn, ours = rows["llmc:gptq-w4g64"], rows["rtn-w4g64"], rows["default"]
        for k in keys:
            ratio = ours["kl"][k] / peer["kl"][k]
            print(
                f"| {k} | {res['base_ppl'][k]:.3f} | {peer['kl'][k]:.4f} / {peer['ppl'][k]:.3f} | "
                f"{rtn['kl'][k]:.4f} / {rtn['ppl'][k]:.3f} | {ours['kl'][k]:.4f} / {ours['ppl'][k]:.3f} | {ratio:.3f} |"
            )
            if k != "kjv:eval":
                verdicts.append((ratio <= 0.75, f"default, {k}: KL {ratio:.3f}× llm-compressor GPTQ w4g64 (≤ 0.75)"))
                verdicts.append((ours["kl"][k] < rtn["kl"][k], f"default, {k}: KL below RTN w4g64's"))
    print("\n### targets\n")
    for ok, line in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}: {line}")


if __name__ == "__main__":
    main()
