"""Measure once per model, calibration and candidate set: Hessians, the Fisher sensitivity pass and each
candidate's predicted ΔKL (cached under $CACHE/auto/; the target does not enter)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tensorpress.calibration.forward import capture_inputs
from tensorpress.calibration.sensitivity import forward_hessians, output_fisher
from tensorpress.calibration.stats import Hessian
from tensorpress.calibration.windows import calibration_windows
from tensorpress.compressors.ggml_fit import quantize_rtn
from tensorpress.compressors.quantize import rtn_quantize
from tensorpress.formats.ggml_types import ggml_type
from tensorpress.formats.quantized import QuantScheme
from tensorpress.infra.cache import cache_dir
from tensorpress.model.architecture import get_weight
from tensorpress.pipeline.auto.awq_columns import awq_step, candidate_columns, column_map
from tensorpress.pipeline.auto.budget import BudgetConfig
from tensorpress.pipeline.auto.candidates import nearest_reference, reference_schemes
from tensorpress.pipeline.auto.problem import Problem
from tensorpress.version import __version__

SENSITIVITY = "coherent-fisher"  # the estimate's method; part of the measurement cache's key


def candidate_errors(
    weights: dict[str, torch.Tensor],
    h: Hessian,
    candidates: list[QuantScheme],
    estimator: str,
    step_cfg,
    columns: list[torch.Tensor | None],
) -> dict[str, list[torch.Tensor]]:
    """ē(c) = diag(ΔW Ĥ ΔWᵀ) (out,) per module and candidate; modules sharing H are stacked (rows are
    independent given H, so this is exactly the per-module result). `columns`: per candidate, AWQ's
    column scales or None."""
    names = list(weights)
    W = torch.cat([weights[n] for n in names])  # (Σ out, in)
    H_mean = h.H / max(h.n, 1)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for sch, cols in zip(candidates, columns, strict=True):
        if estimator == "gptq":
            from tensorpress.compressors.gptq_sweep import gptq_quantize

            c = torch.ones(W.shape[1], device=W.device) if cols is None else cols
            res = gptq_quantize(
                W * c,
                h.H / torch.outer(c, c),
                sch,
                torch.float32,
                getattr(step_cfg, "block_size", 128),
                getattr(step_cfg, "dampening", 0.01),
                getattr(step_cfg, "act_order", False),
                getattr(step_cfg, "mse_clip", False),
            )
            D = (W * c - res.dense) / c
        else:
            D = rounding_error(W, sch, torch.diag(h.H), cols)
        e = ((D @ H_mean) * D).sum(1)  # (Σ out,)
        row = 0
        for n in names:
            k = weights[n].shape[0]
            out[n].append(e[row : row + k])
            row += k
    return out


def rounding_error(
    W: torch.Tensor, sch: QuantScheme, diag_h: torch.Tensor, cols: torch.Tensor | None = None
) -> torch.Tensor:
    """ΔW (out, in) of rounding W to candidate sch: RTN, or a GGUF type's grid fitted weighted by diag H as
    the layer loop fits it; with AWQ's column scales `cols` (in,), of rounding W·diag(cols), mapped back
    (pipeline/auto/awq_columns.py). Needs no Hessian beyond its diagonal, so the backward pass can redo it."""
    if cols is not None:  # Q(W·s)/s − W = (Q(W·s) − W·s)/s; the scaled inputs x/s have diag H / s²
        return rounding_error(W * cols, sch, diag_h / cols.square()) / cols
    if sch.ggml is not None:
        return W - quantize_rtn(ggml_type(sch.ggml), W, diag_h).dequantize()
    return W - rtn_quantize(W, sch, torch.float32).dequantize()


def measurement_cache(ckpt, rec, problem: Problem) -> Path:
    """Where the predicted-loss table of this model, calibration and candidate set is kept: the target does
    not change it, so a rerun with another budget skips straight to the knapsack."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in ckpt.files]
    budget = {k: v for k, v in asdict(rec.budget).items() if k not in ("bits_per_weight", "size")}
    key = json.dumps(
        [
            __version__,
            SENSITIVITY,
            str(ckpt.folder.resolve()),
            stats,
            asdict(rec.calibration),
            budget,
            problem.step.to_dict(),
            [s.to_dict() for s in rec.steps if s.name == "awq"] if rec.budget.awq_scaled else [],
            [[s.bits, s.group_size, s.symmetric, s.ggml] for s in problem.candidates],
        ],
        sort_keys=True,
        default=str,
    )
    return cache_dir() / "auto" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def measure(problem: Problem, skel, ckpt, rec, tokenizer, device: str, progress=None):
    """(loss[module][candidate] predicted ΔKL, sensitivity tokens, seconds per phase)."""
    budget: BudgetConfig = rec.budget
    names = problem.names
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    c = rec.calibration
    keep = math.ceil(budget.fisher_samples / c.batch_size)
    awq = awq_step(rec) if budget.awq_scaled else None
    repair_awq = awq_step(rec) if budget.estimator == "repaired" else None  # the repair's own AWQ, if any
    refs = reference_schemes(problem.step)  # estimator repaired: its reference widths
    repair = "gptq" if problem.step.name == "gptq" else "rtn"  # an rtn step repairs nothing itself
    # H (or its diagonal) enters only GPTQ's sweep, AWQ's scale search and GGUF grid fits; without them the
    # forward needs just the sensitivity windows (on the sample: 8 windows instead of 32, minutes saved)
    needs_h = budget.estimator != "rtn" or awq is not None or rec.gguf is not None
    count = budget.samples if needs_h else min(budget.samples, keep * c.batch_size)
    windows = calibration_windows(c.sources, tokenizer, count, c.seqlen, c.seed)
    inputs, kwargs_list = capture_inputs(skel, ckpt, windows, c.batch_size, device)
    errors: dict[str, list[torch.Tensor]] = {}  # ē(c) (out,) per module by a non-rtn estimator
    rounding: dict[str, list[torch.Tensor]] = {}  # and by plain rounding (the coherent probes)
    diag_h: dict[str, torch.Tensor] = {}
    columns: dict[str, list[torch.Tensor | None]] = {}  # per module and candidate: AWQ's column scales

    def on_layer(i: int, layer, stats: dict[str, Hessian]) -> None:
        prefix = skel.layer_prefix(i)
        by_h: dict[int, dict[str, torch.Tensor]] = {}
        for n, h in stats.items():
            by_h.setdefault(id(h), {})[n] = get_weight(layer.get_submodule(n[len(prefix) :])).detach().float()
            diag_h[n] = torch.diag(h.H).clone()
        for group in by_h.values():
            first = next(iter(group))  # modules sharing H share their width, so their candidates
            h, cands = stats[first], problem.module_candidates[names.index(first)]
            cols: list[torch.Tensor | None] = [None] * len(cands)
            col_map = column_map(layer, prefix, first, names)
            if awq is not None:
                cols = candidate_columns(group, h, cands, awq, col_map)
            columns.update(dict.fromkeys(group, cols))
            if budget.estimator == "repaired":
                ref_cols: list[torch.Tensor | None] = [None] * len(refs)
                if repair_awq is not None:
                    ref_cols = candidate_columns(group, h, refs, repair_awq, col_map)
                errors.update(candidate_errors(group, h, refs, repair, problem.step.config, ref_cols))
                rounding.update(candidate_errors(group, h, refs, "rtn", problem.step.config, [None] * len(refs)))
            elif budget.estimator != "rtn":
                errors.update(candidate_errors(group, h, cands, budget.estimator, problem.step.config, cols))
                rounding.update(candidate_errors(group, h, cands, "rtn", problem.step.config, cols))

    kept = forward_hessians(skel, ckpt.tensor, inputs, kwargs_list, names, on_layer, keep, device, progress)
    seconds["measure"] = time.perf_counter() - t

    def probe(n: str, W: torch.Tensor) -> list[torch.Tensor]:
        cands = problem.module_candidates[names.index(n)]
        return [rounding_error(W, sch, diag_h[n], cols) for sch, cols in zip(cands, columns[n], strict=True)]

    t = time.perf_counter()
    fisher, tokens, coherent = output_fisher(
        skel, ckpt.tensor, kept, kwargs_list, names, skel.head_source(), c.seed, device, progress, probe
    )
    del kept, inputs
    seconds["sensitivity"] = time.perf_counter() - t
    nearest = [nearest_reference(c) for c in problem.module_candidates] if budget.estimator == "repaired" else None
    return predicted_loss(names, coherent, fisher, errors, rounding, nearest), tokens, seconds


def predicted_loss(names, coherent, fisher, errors, rounding, refs=None) -> list[list[float]]:
    """ΔKL[module][candidate]: the coherent estimate of the candidate's rounding error; with another
    estimator, scaled by how much less (Fisher-weighted) error that estimator leaves than rounding — per
    candidate, or (`refs`: per module, each candidate's reference index) at the candidate's reference."""
    loss = []
    for i, n in enumerate(names):
        row = []
        for k, coh in enumerate(coherent[n]):
            if n in rounding:
                r = refs[i][k] if refs is not None else k
                est, rnd = float((fisher[n] * errors[n][r]).sum()), float((fisher[n] * rounding[n][r]).sum())
                coh *= est / rnd if rnd > 0 else 1.0
            row.append(coh)
        loss.append(row)
    return loss
