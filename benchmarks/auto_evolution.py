"""Does an evolutionary search on measured KL (EvoPress-style) improve on `auto`'s knapsack allocation?

Issue 16's optional step 4, tried as a benchmark before it earns a place in the product. On the sample
model (g64 levels 2, 3, 4, 5 and 6 bits per module):

    database   effective weights of uniform AWQ + GPTQ runs at each level (`--work`/awq-gptq-w{b}g64, built when
               missing), AWQ's folds mapped back onto the base model's inputs, so any mix of levels is a
               consistent model: q/k/gate take the norm's scale ratio per column, v/up also their row scale,
               o/down the row scale of v/up before them
    start      the multiple-choice knapsack over those levels with the shipped `auto` measurement (cached
               by an earlier auto run of the same calibration, else measured here)
    search     per generation `--offspring` children of the parent, each 1–3 budget-preserving swaps (one
               module a level down, another of the same shape a level up: bytes unchanged); all are scored
               on 1 random held-out kjv:calib window, the best 3 and the parent on 4 (EvoPress's selection
               on growing numbers of tokens); the best becomes the parent
    report     KL vs base on the auto benchmark's eval windows (kjv:eval and Botchan, never calibrated on) of
               the stitched uniform w3 model, the start and the evolved allocation, and their ratios

Every forward is the full 135M model on a 512-token window (≈1 s on 2 cores), so a generation costs
≈ 8 + 16 window forwards. Usage (after `benchmarks/auto_precision.py --work W` built the base logits):

    OMP_NUM_THREADS=2 python benchmarks/auto_evolution.py --work W --target 3.25 --generations 40
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from auto_precision import base_reference, methods, novel_text

import tensorpress
from tensorpress.calibration.windows import calibration_windows, eval_windows, load_tokenizer
from tensorpress.evaluation.metrics import compare_window
from tensorpress.model.architecture import build_skeleton
from tensorpress.model.checkpoint import open_checkpoint
from tensorpress.model.sample import ensure_sample
from tensorpress.pipeline.auto import knapsack
from tensorpress.pipeline.auto.measure import measure, measurement_cache
from tensorpress.pipeline.auto.problem import allocation_problem
from tensorpress.pipeline.plan import plan_targets
from tensorpress.pipeline.recipe import load_recipe

LEVELS = [2, 3, 4, 5, 6]
HEAD_DIM = 64  # SmolLM2's attention head width (o_proj's input columns per v_proj head)


def uniform_outputs(model: Path, work: Path, samples: int) -> dict[int, Path]:
    """awq-gptq-w{b}g64 outputs for every level, compressed here when missing."""
    recipe = methods(samples)["awq-gptq-w3g64"][0]
    out = {}
    for b in LEVELS:
        folder = work / f"awq-gptq-w{b}g64"
        if not (folder / "config.json").exists():
            awq, gptq = recipe["steps"]
            rec = {**recipe, "steps": [awq, {**gptq, "gptq": {**gptq["gptq"], "bits": b}}]}
            tensorpress.compress(model, rec, folder, force=True)
        out[b] = folder
    return out


def effective_weights(base, folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Each module's dequantized weight as seen from the base model's inputs (AWQ's folds undone), fp16."""
    final = tensorpress.load(folder).float()

    def w(model, n: str) -> torch.Tensor:
        return model.get_submodule(n).weight.detach().float()

    def norm_ratio(n: str) -> torch.Tensor:  # (in,): how AWQ rescaled the norm feeding n
        layer = n.rsplit(".", 2)[0]
        norm = layer + (".input_layernorm" if ".self_attn." in n else ".post_attention_layernorm")
        return w(final, norm) / w(base, norm)

    def row_scale(n: str) -> torch.Tensor:  # (out,): how AWQ rescaled n's rows (least squares vs base)
        Wc, Wb = w(final, n) * norm_ratio(n), w(base, n)
        return (Wc * Wb).sum(1) / Wb.square().sum(1)

    out = {}
    for n in names:
        prefix, kind = n.rsplit(".", 1)
        if kind in ("q_proj", "k_proj", "gate_proj"):
            e = w(final, n) * norm_ratio(n)
        elif kind in ("v_proj", "up_proj"):
            e = w(final, n) * norm_ratio(n) / row_scale(n)[:, None]
        else:
            r = row_scale(prefix + (".v_proj" if kind == "o_proj" else ".up_proj"))
            if kind == "o_proj":  # v's rows are per kv head; o's columns per attention head
                heads = w(final, n).shape[1] // HEAD_DIM
                r = r.view(-1, HEAD_DIM).repeat_interleave(heads // (r.numel() // HEAD_DIM), 0).reshape(-1)
            e = w(final, n) * r
        out[n] = e.half()
    return out


def window_kl(model, ids: torch.Tensor, base_logp: torch.Tensor) -> float:
    """Mean per-token KL(base ‖ model) of one window (L,); base_logp (L-1, V)."""
    with torch.no_grad():
        kl, _agree = compare_window(base_logp[None], model(ids[None]).logits.float())
    return kl / base_logp.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True, help="auto_precision.py's --work (base logits, outputs)")
    ap.add_argument("--target", type=float, default=3.25, help="bits per weight")
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--offspring", type=int, default=8)
    ap.add_argument("--samples", type=int, default=32, help="calibration windows of the uniform runs")
    ap.add_argument("--windows", type=int, default=32, help="eval windows (as auto_precision.py's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    sample = ensure_sample()
    recipe, _ = methods(args.samples)["auto-3.5"]
    rec = load_recipe({**recipe, "budget": {**recipe["budget"], "bits_per_weight": args.target}})
    ckpt = open_checkpoint(sample.model)
    skel = build_skeleton(ckpt.config_dict, ckpt.reader.names())
    problem = allocation_problem(skel, ckpt, rec, plan_targets(skel, rec))
    names, tok = problem.names, load_tokenizer(sample.model)
    cache = measurement_cache(ckpt, rec, problem)
    if cache.exists():
        loss = json.loads(cache.read_text())["loss"]
    else:
        loss = measure(problem, skel, ckpt, rec, tok, "cpu")[0]
    level = [[next(j for j, c in enumerate(cands) if (c.bits, c.group_size) == (b, 64)) for b in LEVELS]
             for cands in problem.module_candidates]  # fmt: skip
    costs = [[problem.costs[i][k] for k in row] for i, row in enumerate(level)]
    losses = [[loss[i][k] for k in row] for i, row in enumerate(level)]
    start = knapsack.choose(costs, losses, problem.budget_bytes)
    used = sum(costs[i][k] for i, k in enumerate(start))
    print(f"start: {used:,} bytes of {problem.budget_bytes:,}", flush=True)

    base = tensorpress.load(sample.model).float().eval()
    W0 = {n: base.get_submodule(n).weight.detach().clone() for n in names}
    t = time.perf_counter()
    folders = uniform_outputs(sample.model, args.work, args.samples)
    db = {b: effective_weights(base, f, names) for b, f in folders.items()}
    print(f"database: {time.perf_counter() - t:.0f} s", flush=True)
    shape = [tuple(W0[n].shape) for n in names]

    def use(levels: list[int] | None) -> None:
        for i, n in enumerate(names):
            base.get_submodule(n).weight.data = W0[n] if levels is None else db[LEVELS[levels[i]]][n].float()

    calib = calibration_windows("kjv:calib", tok, 16, 512, seed=args.seed + 1)  # not the runs' windows (seed 0)
    use(None)
    with torch.no_grad():
        calib_base = [torch.log_softmax(base(w[None]).logits[0, :-1].float(), -1) for w in calib]

    def fitness(levels: list[int], windows: list[int]) -> float:
        use(levels)
        return sum(window_kl(base, calib[w], calib_base[w]) for w in windows) / len(windows)

    def mutate(levels: list[int]) -> list[int]:
        child = list(levels)
        for _ in range(rng.choice([1, 1, 2, 3])):
            for _try in range(1000):
                i, j = rng.randrange(len(child)), rng.randrange(len(child))
                if i != j and shape[i] == shape[j] and child[i] > 0 and child[j] < len(LEVELS) - 1:
                    child[i], child[j] = child[i] - 1, child[j] + 1
                    break
        return child

    parent, t = start, time.perf_counter()
    for g in range(args.generations):
        order = rng.sample(range(len(calib)), len(calib))
        kids = [mutate(parent) for _ in range(args.offspring)]
        best = sorted(kids, key=lambda k: fitness(k, order[:1]))[:3]
        parent = min([*best, parent], key=lambda k: fitness(k, order[:4]))
        print(f"generation {g}: {time.perf_counter() - t:.0f} s", flush=True)
    assert sum(costs[i][k] for i, k in enumerate(parent)) == used  # swaps keep the bytes
    moved = sum(a != b for a, b in zip(start, parent, strict=True))
    print(f"search: {args.generations} generations, {time.perf_counter() - t:.0f} s, {moved} modules moved")

    texts = {"kjv:eval": "kjv:eval", "botchan": str(novel_text())}
    print(f"\n| allocation ({args.target:g} bits/weight, g64 levels) | KL kjv:eval | KL botchan |\n|---|---|---|")
    tokens = {k: eval_windows(text, tok, args.windows, 512) for k, text in texts.items()}
    refs = {k: base_reference(sample.model, tokens[k], args.work / f"base-{k.replace(':', '-')}.npy") for k in texts}
    table = {}
    for label, levels in (("uniform w3 (stitched)", [1] * len(names)), ("knapsack start", start), ("evolved", parent)):
        use(levels)
        kl = {}
        for k, ids in tokens.items():
            kl[k] = sum(window_kl(base, ids[i], refs[k].logp(i, i + 1)[0]) for i in range(len(ids))) / len(ids)
        table[label] = kl
        u = table["uniform w3 (stitched)"]
        print(f"| {label} | {kl['kjv:eval']:.4f} ({kl['kjv:eval'] / u['kjv:eval']:.3f}×) "
              f"| {kl['botchan']:.4f} ({kl['botchan'] / u['botchan']:.3f}×) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
