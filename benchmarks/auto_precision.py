"""Automatic mixed precision against uniform GPTQ and AWQ+GPTQ on the sample model, in one run.

Uniform gptq and awq-gptq at 3 and 4 bits (g64; g128 is impossible on this model: its 576-wide inputs
are not divisible by 128), and the shipped `auto` recipe at 2.5, 3.0, 3.25, 3.5, 4.0 and 4.25 bits per
weight. Every method calibrates on the same kjv:calib windows; each output is evaluated against the base
model (logits computed once per text) on 48×512 tokens of kjv:eval and of a text of another kind never
used for calibration: the English translation of Natsume Sōseki's novel *Botchan* (Project Gutenberg,
public domain), shipped as test data in the sentencepiece 0.2.0 sdist and fetched here with pip.

    nice -n 10 python benchmarks/auto_precision.py [--samples 128] [--windows 48] [--only auto-3.5,...]
        [--json FILE] [--chart FILE] [--work DIR]

Prints one table (KL and ppl on both texts, top-1, bits/weight, budget, compression seconds) and saves
one chart (KL vs bits per weight on both texts). The first `auto` run measures from scratch and is timed
against the uniform awq-gptq-w4g64 run; later auto runs reuse its cached measurement (same model,
calibration and candidates), as a user re-running with another target would.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import tensorpress
from tensorpress.calibration.windows import eval_windows, load_tokenizer
from tensorpress.evaluation.metrics import BaseReference, evaluate_tokens, token_nll
from tensorpress.formats.sizes import size_stats
from tensorpress.infra.cache import cache_dir
from tensorpress.model.sample import ensure_sample

AUTO_BPW = (3.5, 2.5, 3.0, 3.25, 4.0, 4.25)  # 3.5 first: the timed run measures from scratch
NOVEL_SDIST = "sentencepiece==0.2.0"
NOVEL_MEMBER = "sentencepiece-0.2.0/test/botchan.txt"


def novel_text() -> Path:
    """Botchan, without the Project Gutenberg header and license (fetched once into the cache)."""
    dest = cache_dir() / "text" / "botchan.txt"
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
        subprocess.run([*cmd, "-d", tmp, NOVEL_SDIST], check=True, capture_output=True)
        sdist = next(Path(tmp).glob("sentencepiece-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            raw = tar.extractfile(NOVEL_MEMBER).read().decode("utf-8-sig")
    start = re.search(r"\*\*\* ?START OF TH.*?\n", raw)
    end = re.search(r"\*\*\* ?END OF TH", raw)
    body = raw[start.end() if start else 0 : end.start() if end else len(raw)].strip()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body + "\n", encoding="utf-8")
    return dest


def methods(
    samples: int, groups: list[int] | None = None, estimator: str | None = None
) -> dict[str, tuple[str | dict, float | None]]:
    """name → (recipe, target bits/weight); `groups`, `estimator`: the auto recipe's (default: shipped)."""
    calib = {"text": "kjv:calib", "samples": samples, "seqlen": 512, "seed": 0}
    ignore = {"ignore": ["lm_head"]}
    awq = {"awq": {"grid": 20, "objective": "linear"}, **ignore}

    def gptq(bits: int, symmetric: bool = True) -> dict:
        return {"gptq": {"bits": bits, "group_size": 64, "symmetric": symmetric, "actorder": "static"}, **ignore}

    out: dict[str, tuple[str | dict, float | None]] = {}
    for b in (3, 4):
        out[f"gptq-w{b}g64"] = ({"calibration": calib, "steps": [gptq(b)]}, None)
        out[f"awq-gptq-w{b}g64"] = ({"calibration": calib, "steps": [awq, gptq(b)]}, None)
    for b in (3, 4):  # not the reference points: zero points cost 0.05 bits/weight more at g64
        out[f"asym-awq-gptq-w{b}g64"] = ({"calibration": calib, "steps": [awq, gptq(b, symmetric=False)]}, None)
    auto = {
        "name": "auto",
        "calibration": calib,
        "budget": {
            "bits": [2, 3, 4, 5, 6, 8],
            "group_sizes": groups or shipped_budget()["group_sizes"],
            "estimator": estimator or shipped_budget().get("estimator", "rtn"),
        },
        "steps": [awq, gptq(4)],
    }
    for t in AUTO_BPW:
        out[f"auto-{t:g}"] = (auto, t)
    asym = {**auto, "budget": {**auto["budget"], "asymmetric_bits": [2, 3, 4]}}
    for t in (3.25, 3.5, 4.25):  # opt-in asymmetric candidates (transformers cannot load their output)
        out[f"asym-auto-{t:g}"] = (asym, t)
    return out


def shipped_budget() -> dict:
    """The shipped `auto` recipe's budget section (the benchmark runs what users get)."""
    import yaml

    return yaml.safe_load((Path(__file__).parents[1] / "recipes" / "auto.yaml").read_text())["budget"]


def base_reference(model: Path, tokens, path: Path) -> BaseReference:
    """The base log-probs on `tokens`, reused from `path` when an earlier invocation computed them on the
    same tokens (its token ids are kept beside it)."""
    import numpy as np
    import torch

    ids = path.with_suffix(".tokens.pt")
    if path.exists() and ids.exists() and torch.equal(torch.load(ids), tokens):
        return BaseReference(path, tokens, int(np.load(path, mmap_mode="r").shape[-1]))
    ids.unlink(missing_ok=True)
    ref = BaseReference.compute(model, tokens, path)
    torch.save(tokens, ids)
    return ref


def base_ppl(ref: BaseReference, tokens) -> float:
    nll = sum(token_nll(ref.logp(i, i + 1), tokens[i : i + 1]) for i in range(len(tokens)))
    return math.exp(nll / (tokens.shape[0] * (tokens.shape[1] - 1)))


def chart(rows: list[dict], path: Path, texts: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(texts), figsize=(6 * len(texts), 4.2), layout="constrained")
    for ax, text in zip(axes, texts, strict=True):
        for family, style in (("gptq-", "s"), ("awq-gptq-", "D"), ("asym-awq-gptq-", "^")):
            pts = [r for r in rows if r["method"].startswith(family) and "auto" not in r["method"]]
            if family == "gptq-":
                pts = [r for r in pts if not r["method"].startswith("awq")]
            if not pts:  # no legend entry for a family this invocation did not run
                continue
            ax.scatter(
                [r["bits_per_weight"] for r in pts],
                [r["kl"][text] for r in pts],
                marker=style,
                s=50,
                label=f"uniform {family.rstrip('-')}",
                zorder=3,
            )
            for r in pts:
                ax.annotate(
                    r["method"],
                    (r["bits_per_weight"], r["kl"][text]),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=7,
                )
        series = (
            ("auto", "o-", "#c44e52", "auto (mixed precision)"),
            ("asym-auto", "v--", "#8172b2", "auto + asymmetric candidates (opt-in)"),
        )
        for prefix, style, color, label in series:
            pts = sorted((r for r in rows if r["method"].startswith(prefix)), key=lambda r: r["bits_per_weight"])
            if pts:
                xs, ys = [r["bits_per_weight"] for r in pts], [r["kl"][text] for r in pts]
                ax.plot(xs, ys, style, color=color, label=label, zorder=2)
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight (quantized Linears)")
        ax.set_ylabel("KL(base ‖ compressed) per token")
        ax.set_title(f"SmolLM2-135M-Instruct, eval {text}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


VALIDATE = (
    "model.layers.0.mlp.down_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.3.self_attn.q_proj",
    "model.layers.15.mlp.gate_proj",
    "model.layers.15.self_attn.o_proj",
    "model.layers.29.mlp.down_proj",
)


def validate_estimator(samples: int, windows: int, bits: tuple[int, ...] = (2, 3)) -> list[dict]:
    """Predicted ΔKL (RTN error on H × output Fisher) against the KL measured by quantizing one module
    alone (RTN, same scheme) on `windows` calibration windows that are not the Fisher windows (another seed)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tensorpress.calibration.windows import calibration_windows
    from tensorpress.compressors.quantize import rtn_quantize
    from tensorpress.model.architecture import build_skeleton
    from tensorpress.model.checkpoint import open_checkpoint
    from tensorpress.pipeline.auto.measure import measure
    from tensorpress.pipeline.auto.problem import allocation_problem
    from tensorpress.pipeline.plan import plan_targets
    from tensorpress.pipeline.recipe import load_recipe

    sample = ensure_sample()
    recipe, _ = methods(samples)["auto-3.5"]  # the shipped candidates
    rec = load_recipe({**recipe, "budget": {**recipe["budget"], "bits_per_weight": 3.5, "samples": samples}})
    ckpt = open_checkpoint(sample.model)
    skel = build_skeleton(ckpt.config_dict, ckpt.reader.names())
    problem = allocation_problem(skel, ckpt, rec, plan_targets(skel, rec))
    tok = load_tokenizer(sample.model)
    loss, _tokens, _secs = measure(problem, skel, ckpt, rec, tok, "cpu")
    ckpt.close()
    model = AutoModelForCausalLM.from_pretrained(sample.model, dtype=torch.float32).eval()
    ids = calibration_windows("kjv:calib", tok, windows, 512, seed=1)

    def logp() -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(ids).logits[:, :-1].float(), -1)

    base = logp()
    out = []
    for name in VALIDATE:
        lin = model.get_submodule(name)
        w0 = lin.weight.data.clone()
        i = problem.names.index(name)
        for b in bits:
            k = next(j for j, c in enumerate(problem.candidates) if c.bits == b)
            lin.weight.data = rtn_quantize(w0, problem.candidates[k], torch.float32).dequantize()
            lp = logp()
            kl = float((base.exp() * (base - lp)).sum(-1).mean())
            out.append({"module": name, "bits": b, "predicted": loss[i][k], "measured": kl})
            print(json.dumps(out[-1]), flush=True)
        lin.weight.data = w0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=128, help="calibration windows of 512 tokens (every method)")
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--only", default="", help="comma-separated method names")
    groups_help = "auto's candidate group sizes, e.g. 64,-1 (default: recipes/auto.yaml's)"
    ap.add_argument("--group-sizes", default="", help=groups_help)
    ap.add_argument("--estimator", default="", help="auto's budget.estimator (default: recipes/auto.yaml's)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (outputs, base-logit caches)")
    ap.add_argument("--json", type=Path, default=Path("auto_precision.json"), help="rows, kept across invocations")
    ap.add_argument("--chart", type=Path, default=Path("auto_precision.png"))
    ap.add_argument(
        "--validate", action="store_true", help="only: predicted vs measured KL of single modules (--windows of them)"
    )
    ap.add_argument(
        "--keep-measurement",
        action="store_true",
        help="reuse a cached auto measurement (the timed from-scratch auto row is kept from an earlier invocation)",
    )
    args = ap.parse_args()
    if args.validate:
        rows = validate_estimator(args.samples, args.windows)
        pred = [math.log(r["predicted"]) for r in rows]
        meas = [math.log(r["measured"]) for r in rows]
        print("\n| module | bits | predicted ΔKL | measured KL | measured/predicted |\n|---|---|---|---|---|")
        for r in rows:
            q = r["measured"] / r["predicted"]
            print(f"| {r['module']} | {r['bits']} | {r['predicted']:.5f} | {r['measured']:.5f} | {q:.2f} |")
        n = len(rows)
        mp, mm = sum(pred) / n, sum(meas) / n
        cov = sum((a - mp) * (b - mm) for a, b in zip(pred, meas, strict=True))
        var = math.sqrt(sum((a - mp) ** 2 for a in pred) * sum((b - mm) ** 2 for b in meas))
        print(f"\nPearson correlation of log predicted vs log measured: {cov / var:.3f}")
        return
    sample = ensure_sample()
    work = args.work or Path(tempfile.mkdtemp(prefix="tp-auto-"))
    tok = load_tokenizer(sample.model)
    texts = {"kjv:eval": "kjv:eval", "botchan": str(novel_text())}
    tokens = {k: eval_windows(v, tok, args.windows, args.seqlen) for k, v in texts.items()}
    refs, ppl_base = {}, {}
    for k in texts:
        refs[k] = base_reference(sample.model, tokens[k], work / f"base-{k.replace(':', '-')}.npy")
        ppl_base[k] = base_ppl(refs[k], tokens[k])
    groups = [int(g) for g in args.group_sizes.split(",")] if args.group_sizes else None
    todo = methods(args.samples, groups, args.estimator or None)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    if any("auto" in k for k in todo) and not args.keep_measurement:  # the first auto run is timed
        shutil.rmtree(cache_dir() / "auto", ignore_errors=True)
    kept = []
    if args.json.exists():
        kept = [r for r in json.loads(args.json.read_text())["rows"] if r["method"] not in todo]
    rows = []
    for name, (recipe, target) in todo.items():
        out = work / name
        t = time.perf_counter()
        res = tensorpress.compress(sample.model, recipe, out, force=True, target_bpw=target)
        secs = time.perf_counter() - t
        sz = size_stats(out)
        row = {
            "method": name,
            "target_bpw": target,
            "bits_per_weight": sz["bits_per_weight"],
            "seconds": secs,
            "kl": {},
            "ppl": {},
            "top1": {},
            "notes": res.notes,
        }
        cfg = json.loads((out / "config.json").read_text())["tensorpress"]
        if "auto" in cfg:
            a = cfg["auto"]
            row.update(
                predicted_kl=a["predicted_kl"],
                auto_seconds=a["seconds"],
                budget_bpw=a["budget_bits_per_weight"],
                bits_count={str(b): sum(m["bits"] == b for m in a["modules"].values()) for b in (2, 3, 4, 5, 6, 8)},
                measurement_cached=a.get("cached", False),
                schemes_count=dict(Counter(f"w{m['bits']}g{m['group_size']}" for m in a["modules"].values())),
            )
        for k in texts:
            m = evaluate_tokens(out, refs[k], tokens[k])
            row["kl"][k], row["ppl"][k], row["top1"][k] = m["kl"], m["ppl"], m["top1_agreement"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        doc = {"ppl_base": ppl_base, "samples": args.samples, "rows": kept + rows}
        args.json.write_text(json.dumps(doc, indent=2))
        shutil.rmtree(out, ignore_errors=True)
    order = list(methods(args.samples))
    rows = sorted(kept + rows, key=lambda r: order.index(r["method"]) if r["method"] in order else 99)
    by = {r["method"]: r for r in rows}
    print()
    print(
        f"SmolLM2-135M-Instruct; calibration {args.samples}×512 kjv:calib; eval {args.windows}×{args.seqlen} of "
        f"kjv:eval (base ppl {ppl_base['kjv:eval']:.3f}) and botchan (base ppl {ppl_base['botchan']:.3f})"
    )
    print()
    print(
        "| method | bits/weight | KL kjv:eval | KL botchan | ppl kjv:eval | ppl botchan | top-1 kjv | predicted KL "
        "| compress s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pred = f"{r['predicted_kl']:.4f}" if r.get("predicted_kl") is not None else ""
        print(
            f"| {r['method']} | {r['bits_per_weight']:.4f} | {r['kl']['kjv:eval']:.4f} | {r['kl']['botchan']:.4f} | "
            f"{r['ppl']['kjv:eval']:.3f} | {r['ppl']['botchan']:.3f} | {r['top1']['kjv:eval']:.2%} | {pred} | "
            f"{r['seconds']:.0f}{' (cached measurement)' if r.get('measurement_cached') else ''} |"
        )
    print()
    checks = []
    autos = sorted((r for r in rows if r["method"].startswith("auto")), key=lambda r: r["bits_per_weight"])
    for r in autos:
        ok = r["target_bpw"] * 0.99 <= r["bits_per_weight"] <= r["target_bpw"]
        checks.append((f"{r['method']}: bits/weight {r['bits_per_weight']:.4f} within 1% below {r['target_bpw']}", ok))

    def ratio(a: str, b: str, text: str) -> float:
        return by[a]["kl"][text] / by[b]["kl"][text]

    for text in texts:
        if {"auto-3.25", "awq-gptq-w3g64"} <= by.keys():
            q = ratio("auto-3.25", "awq-gptq-w3g64", text)
            checks.append((f"[{text}] auto-3.25 / awq-gptq-w3g64 KL = {q:.3f} (target ≤ 0.7)", q <= 0.7))
        if {"auto-3.5", "awq-gptq-w3g64"} <= by.keys():
            q = ratio("auto-3.5", "awq-gptq-w3g64", text)
            checks.append((f"[{text}] auto-3.5 / awq-gptq-w3g64 KL = {q:.3f} (target ≤ 0.5)", q <= 0.5))
        if {"auto-4.25", "awq-gptq-w4g64"} <= by.keys():
            q = ratio("auto-4.25", "awq-gptq-w4g64", text)
            checks.append((f"[{text}] auto-4.25 / awq-gptq-w4g64 KL = {q:.3f} (target ≤ 0.85)", q <= 0.85))
        for u in (r for r in rows if not r["method"].startswith(("auto", "asym-"))):  # the uniform points
            below = [a for a in autos if a["bits_per_weight"] <= u["bits_per_weight"] + 1e-9]
            if below:
                a = below[-1]  # the largest auto point not above the uniform point's size
                ok = a["kl"][text] < u["kl"][text]
                checks.append(
                    (
                        f"[{text}] {a['method']} ({a['bits_per_weight']:.3f} b/w) KL {a['kl'][text]:.4f} < "
                        f"{u['method']} ({u['bits_per_weight']:.3f} b/w) {u['kl'][text]:.4f}",
                        ok,
                    )
                )
    info = []  # the opt-in asymmetric variants: against the references and against uniform asymmetric
    for text in texts:
        for a, u in (
            ("asym-auto-3.25", "awq-gptq-w3g64"),
            ("asym-auto-3.5", "awq-gptq-w3g64"),
            ("asym-auto-4.25", "awq-gptq-w4g64"),
            ("asym-auto-3.25", "asym-awq-gptq-w3g64"),
            ("asym-auto-4.25", "asym-awq-gptq-w4g64"),
        ):
            if {a, u} <= by.keys():
                info.append(f"[{text}] {a} / {u} KL = {ratio(a, u, text):.3f}")
    timed = next((a for a in rows if a["method"].startswith("auto") and not a.get("measurement_cached")), None)
    if timed and "awq-gptq-w4g64" in by:
        q = timed["seconds"] / by["awq-gptq-w4g64"]["seconds"]
        checks.append(
            (
                f"{timed['method']} (measured from scratch, {timed['seconds']:.0f} s; phases "
                f"{timed.get('auto_seconds')}) / awq-gptq-w4g64 ({by['awq-gptq-w4g64']['seconds']:.0f} s) "
                f"= {q:.2f}× (target ≤ 3)",
                q <= 3,
            )
        )
    for what, ok in checks:
        print(f"- {'PASS' if ok else 'FAIL'}: {what}")
    for what in info:
        print(f"- info: {what}")
    chart(rows, args.chart, list(texts))
    print(f"\nchart: {args.chart.resolve()}")
    if not args.work:  # a --work folder keeps the base log-probs for the next invocation
        for ref in refs.values():
            ref.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
