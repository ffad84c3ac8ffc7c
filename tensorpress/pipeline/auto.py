"""Automatic mixed precision: measure, then allocate, before the layer loop compresses as usual.

    budget (bits/weight or bytes) ──▶ exact byte budget B of the quantized Linears
    one streamed forward of the base model on `samples` windows (just the `fisher_samples` ones when nothing
        needs H): each module's Hessian H (diag H fits GGUF grids; AWQ's scales with `awq_scaled`; with
        `estimator: gptq`, ē(c) = diag(ΔW Ĥ ΔWᵀ) (out,) of GPTQ's and of rounding's ΔW)
    one streamed backward on `fisher_samples` windows with labels sampled from the base model: per window w
        the module's weight gradient G_w (out, in), and per candidate c its rounding error ΔW(c)
    predicted ΔKL(module, c) = ½ E_w Σ_j (ΔW_j(c) · G_wj)² / tokens   (calibration/sensitivity.py)
        × Ḡ·ē_gptq(c) / Ḡ·ē_rtn(c) with `estimator: gptq`
        × Ḡ·ē_awq+gptq(r) / Ḡ·ē_rtn(r) with `estimator: repaired`, r the reference width nearest c's bits
    multiple-choice knapsack (pipeline/knapsack.py): one candidate per module, Σ bytes ≤ B, Σ ΔKL minimal

The chosen schemes go to the quantizer (and to AWQ's search) through the per-module scheme map; the
layer loop then compresses sequentially, so errors propagate as in any run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tensorpress.calibration.forward import capture_inputs
from tensorpress.calibration.sensitivity import forward_hessians, module_shapes, output_fisher
from tensorpress.calibration.stats import Hessian
from tensorpress.calibration.windows import calibration_windows
from tensorpress.compressors.ggml_fit import quantize_rtn
from tensorpress.compressors.quantize import rtn_quantize
from tensorpress.errors import TensorpressError
from tensorpress.formats.compressed_tensors import packed_bytes
from tensorpress.formats.dtypes import DTYPES
from tensorpress.formats.ggml_types import ggml_type
from tensorpress.formats.quantized import QuantScheme
from tensorpress.infra.atomic import write_text_atomic
from tensorpress.infra.cache import cache_dir
from tensorpress.model.architecture import get_weight
from tensorpress.pipeline import knapsack
from tensorpress.pipeline.auto_awq import awq_step, candidate_columns, column_map
from tensorpress.pipeline.budget import GGUF_CANDIDATES, BudgetConfig, parse_size
from tensorpress.pipeline.gguf_mix import with_fallback
from tensorpress.version import __version__

SENSITIVITY = "coherent-fisher"  # the estimate's method; part of the measurement cache's key
# `estimator: repaired` measures the recipe's repair (AWQ's scales, then GPTQ's sweep) at these bit widths;
# a candidate takes the ratio of the nearest (on the sample: the repair leaves 2–70 % of rounding's error
# per module, at 4 bits a median 0.87× of what it leaves at 3, so one width would not do for all)
REFERENCE_BITS = (3, 4)


@dataclass
class Allocation:
    """The chosen scheme per module and what the report shows about it."""

    schemes: dict[str, QuantScheme]
    info: dict = field(default_factory=dict)


def quantizer_step(rec):
    """The recipe's one quantizer step (auto precision varies its scheme); anything else is an error."""
    quant = [s for s in rec.steps if s.cls.quantizes]
    others = [s.name for s in rec.steps if not s.cls.quantizes and s.name != "awq"]
    where = f"recipe '{rec.source}': budget"
    if len(quant) != 1:
        raise TensorpressError(f"{where}: needs exactly one quantizer step (rtn or gptq), found {len(quant)}")
    if others:
        raise TensorpressError(f"{where}: only awq and one rtn/gptq step can be allocated, not {', '.join(others)}")
    return quant[0]


def candidate_schemes(step, budget: BudgetConfig) -> list[QuantScheme]:
    """The quantizer step's scheme with bits (and group size) varied, cheapest-first per group size; bit
    widths in `asymmetric_bits` come a second time with a zero point per group when the step is symmetric
    (at 2–4 bits a zero point is worth its bytes: the grid spans the group's own [min, max], not ±max|w|)."""
    own = step.config.scheme()
    groups = budget.group_sizes or [own.group_size]
    out = []
    for g in dict.fromkeys(groups):
        for b in sorted(set(budget.bits)):
            out.append(dataclasses.replace(own, bits=b, group_size=g))
            if own.symmetric and b in budget.asymmetric_bits:
                out.append(dataclasses.replace(own, bits=b, group_size=g, symmetric=False))
    return out


def gguf_candidates(budget: BudgetConfig) -> list[QuantScheme]:
    """GGUF output: one candidate per type, cheapest first (as bits per weight on a 256-multiple row)."""
    types = sorted(set(budget.types or GGUF_CANDIDATES), key=lambda t: ggml_type(t).bits_per_weight)
    return [ggml_type(t).scheme() for t in types]


def for_width(c: QuantScheme, in_f: int) -> QuantScheme:
    """A candidate as a module of `in_f` columns stores it: GGUF types take llama-quantize's fallback."""
    return c if c.ggml is None else ggml_type(with_fallback(c.ggml, in_f)).scheme()


def module_candidates(candidates: list[QuantScheme], in_f: int) -> list[QuantScheme]:
    """The candidates a module of `in_f` columns is offered. Group sizes that do not divide its width are
    dropped when another group size does: a short last group stores a whole group's scale for fewer
    weights, and compressed-tensors rejects it. If none divides, all stay (the short last group, as in any
    recipe); per-channel candidates (-1) and GGUF types always stay."""
    grouped = [c for c in candidates if c.ggml is None and c.group_size > 0]
    if any(c.whole_groups(in_f) for c in grouped):
        candidates = [c for c in candidates if c.ggml is not None or c.whole_groups(in_f)]
    return [for_width(c, in_f) for c in candidates]


def label(c: QuantScheme) -> str:
    """How messages name a candidate: a GGUF type, or bits and group size."""
    if c.ggml is not None:
        return c.ggml
    kind = "" if c.symmetric else " asymmetric"
    return f"{c.bits} bits " + ("per channel" if c.group_size == -1 else f"g{c.group_size}") + kind


def stored_bytes(out_f: int, in_f: int, c: QuantScheme, scale_bytes: int) -> int:
    """Bytes of one module under candidate c: GGUF blocks, or compressed-tensors' packed tensors."""
    if c.ggml is not None:
        t = ggml_type(c.ggml)
        return out_f * (in_f // t.block) * t.type_size
    return packed_bytes(out_f, in_f, c, scale_bytes)


def scale_bytes_of(ckpt, skel, name: str) -> int:
    """Bytes per stored scale: scales are kept in the checkpoint's weight dtype (bf16: 2)."""
    info = ckpt.reader.infos.get(skel.name_map.get(name + ".weight", ""))
    return DTYPES[info.dtype].itemsize if info is not None and info.dtype in DTYPES else 4


def byte_budget(budget: BudgetConfig, ckpt, skel, names, shapes, costs, module_cands, metadata_bytes: int) -> int:
    """B, the bytes the quantized Linears may store. Range errors name the target and the candidates' span."""
    weights = sum(o * i for o, i in shapes.values())
    lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
    cheapest, dearest = extreme_candidates(costs, module_cands)
    if budget.bits_per_weight is not None:
        t = budget.bits_per_weight
        lo_bpw, hi_bpw = 8 * lo / weights, 8 * hi / weights
        if t < lo_bpw:
            raise TensorpressError(
                f"--target-bpw {t:g}: below the smallest candidate ({lo_bpw:.4g} bits/weight, every module at "
                f"{cheapest})"
            )
        if t > hi_bpw + 1e-9:
            raise TensorpressError(
                f"--target-bpw {t:g}: above the largest candidate ({hi_bpw:.4g} bits/weight, every module at {dearest})"
            )
        return min(math.floor(t * weights / 8), hi)
    total = parse_size(budget.size)
    fixed = fixed_bytes(ckpt, skel, names, metadata_bytes)
    room = total - fixed
    if room < lo:
        raise TensorpressError(
            f"--target-size {budget.size}: below the smallest candidate ({lo + fixed:,} bytes with every module at "
            f"{cheapest})"
        )
    if room > hi:
        raise TensorpressError(
            f"--target-size {budget.size}: above the largest candidate ({hi + fixed:,} bytes with every module at "
            f"{dearest})"
        )
    return room


def extreme_candidates(costs, module_cands) -> tuple[str, str]:
    """Names of what every module's cheapest and dearest candidates are, for range errors: the candidate
    itself when it is the same for every module (else "its smallest/largest candidate")."""
    out = []
    for pick, word in ((min, "smallest"), (max, "largest")):
        chosen = {label(m[row.index(pick(row))]) for row, m in zip(costs, module_cands, strict=True)}
        out.append(chosen.pop() if len(chosen) == 1 else f"its {word} candidate")
    return out[0], out[1]


def fixed_bytes(ckpt, skel, names: list[str], metadata_bytes: int) -> int:
    """An upper bound on the weight files' bytes other than the quantized modules' codes/scales/zeros:
    every tensor written as it is, each module's weight_shape, and every safetensors header."""
    quantized = {n + ".weight" for n in names}
    written = [k for k in skel.name_map if k not in quantized]
    data = sum(ckpt.reader.infos[skel.name_map[k]].nbytes for k in written)
    data += 16 * len(names)  # weight_shape: int64 [out, in]
    entries = [len(k) for k in written] + [len(n) + 20 for n in names for _ in range(4)]
    header = sum(e + 120 for e in entries)  # name, dtype, shape and two 20-digit offsets, generously
    shards = 1 + (data + header) // (512 * 2**20) + 1
    return data + header + shards * (metadata_bytes + 64)


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
    (pipeline/auto_awq.py). Needs no Hessian beyond its diagonal, so the backward pass can redo it."""
    if cols is not None:  # Q(W·s)/s − W = (Q(W·s) − W·s)/s; the scaled inputs x/s have diag H / s²
        return rounding_error(W * cols, sch, diag_h / cols.square()) / cols
    if sch.ggml is not None:
        return W - quantize_rtn(ggml_type(sch.ggml), W, diag_h).dequantize()
    return W - rtn_quantize(W, sch, torch.float32).dequantize()


@dataclass
class Problem:
    """What the knapsack chooses among, known before any calibration work (so range errors come first)."""

    step: object  # the quantizer step whose scheme varies
    names: list[str]  # the modules it quantizes
    candidates: list[QuantScheme]  # as named in budget and reports
    module_candidates: list[list[QuantScheme]]  # per module: the candidates as it stores them (GGUF fallbacks)
    costs: list[list[int]]  # bytes per module per candidate
    budget_bytes: int
    weights: int  # Σ out × in of the modules


def allocation_problem(skel, ckpt, rec, plan) -> Problem:
    """Modules, candidates, exact byte costs and the byte budget; errors when the target is out of reach."""
    budget: BudgetConfig = rec.budget
    if not budget.has_target:
        raise TensorpressError(
            f"recipe '{rec.name or rec.source}' needs a budget: give --target-bpw or --target-size "
            "(or budget.bits_per_weight / budget.size in the recipe)"
        )
    if rec.gguf is not None and budget.size is not None:
        raise TensorpressError(
            f"--target-size {budget.size}: with GGUF output give --target-bpw (GGUF types are allocated per tensor)"
        )
    step = quantizer_step(rec)
    head = skel.lm_head_name()
    names = list(plan[step.index])
    if head in names:
        raise TensorpressError(f"recipe '{rec.source}': budget: the output head cannot be allocated; ignore {head}")
    candidates = gguf_candidates(budget) if rec.gguf is not None else candidate_schemes(step, budget)
    shapes = module_shapes(skel, names)
    try:
        per_module = [module_candidates(candidates, shapes[n][1]) for n in names]
    except ValueError as e:
        raise TensorpressError(f"recipe '{rec.source}': budget.types: {e}") from e
    costs = [
        [stored_bytes(*shapes[n], c, scale_bytes_of(ckpt, skel, n)) for c in cands]
        for n, cands in zip(names, per_module, strict=True)
    ]
    meta_bytes = 2 * len(json.dumps(rec.to_dict())) + 512  # the shard metadata: the recipe as an escaped string
    B = byte_budget(budget, ckpt, skel, names, shapes, costs, per_module, meta_bytes)
    return Problem(step, names, candidates, per_module, costs, B, sum(o * i for o, i in shapes.values()))


def allocate(problem: Problem, skel, ckpt, rec, tokenizer, device: str, progress=None) -> Allocation:
    """Measure on calibration windows, then choose one candidate per module under the byte budget."""
    budget: BudgetConfig = rec.budget
    names, costs = problem.names, problem.costs
    cache = measurement_cache(ckpt, rec, problem)
    cached = json.loads(cache.read_text()) if cache.exists() else None
    if cached and cached.get("names") == names:
        loss, tokens, seconds = cached["loss"], cached["tokens"], {"measure": 0.0, "sensitivity": 0.0}
    else:
        loss, tokens, seconds = measure(problem, skel, ckpt, rec, tokenizer, device, progress)
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps({"names": names, "loss": loss, "tokens": tokens}))
    t = time.perf_counter()
    picks = knapsack.choose(costs, loss, problem.budget_bytes)
    seconds["allocate"] = time.perf_counter() - t
    return _result(problem, budget, picks, loss, tokens, seconds, cached is not None)


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
        skel, ckpt.tensor, kept, kwargs_list, names, head_source(skel), c.seed, device, progress, probe
    )
    del kept, inputs
    seconds["sensitivity"] = time.perf_counter() - t
    nearest = [nearest_reference(c) for c in problem.module_candidates] if budget.estimator == "repaired" else None
    return predicted_loss(names, coherent, fisher, errors, rounding, nearest), tokens, seconds


def reference_schemes(step) -> list[QuantScheme]:
    """The quantizer step's own scheme at each of REFERENCE_BITS (estimator `repaired`)."""
    own = step.config.scheme()
    return [dataclasses.replace(own, bits=b) for b in REFERENCE_BITS]


def nearest_reference(candidates: list[QuantScheme]) -> list[int]:
    """Per candidate, the index in REFERENCE_BITS of the width nearest its bits (the lower on a tie)."""
    return [min(range(len(REFERENCE_BITS)), key=lambda r: (abs(REFERENCE_BITS[r] - c.bits), r)) for c in candidates]


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


def _result(problem: Problem, budget: BudgetConfig, picks, loss, tokens, seconds, cached: bool) -> Allocation:
    names, costs, per_module = problem.names, problem.costs, problem.module_candidates
    used = sum(costs[i][k] for i, k in enumerate(picks))
    info = {
        "target": {"bits_per_weight": budget.bits_per_weight, "size": budget.size},
        "budget_bytes": problem.budget_bytes,
        "bytes": used,
        "bits_per_weight": 8 * used / problem.weights,
        "budget_bits_per_weight": 8 * problem.budget_bytes / problem.weights,
        "predicted_kl": sum(loss[i][k] for i, k in enumerate(picks)),
        "estimator": budget.estimator,
        "sensitivity_tokens": tokens,
        "cached": cached,  # the measurement came from an earlier run with the same model, calibration, candidates
        "candidates": [_describe(s) for s in problem.candidates],
        "modules": {
            n: {**_describe(per_module[i][k]), "bytes": costs[i][k], "predicted_kl": loss[i][k]}
            for i, (n, k) in enumerate(zip(names, picks, strict=True))
        },
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return Allocation({n: per_module[i][k] for i, (n, k) in enumerate(zip(names, picks, strict=True))}, info)


def _describe(s: QuantScheme) -> dict:
    """A scheme in reports: bits and group size; a GGUF type by name, its bits being bits per weight."""
    if s.ggml is None:
        return {"bits": s.bits, "group_size": s.group_size, "symmetric": s.symmetric}
    return {"bits": ggml_type(s.ggml).bits_per_weight, "type": s.ggml}


def head_source(skel) -> str:
    """The checkpoint tensor holding the output head's weight (the input embedding's when tied)."""
    key = f"{skel.lm_head_name()}.weight"
    if key in skel.name_map:
        return skel.name_map[key]
    emb = skel.model.get_input_embeddings()
    for name, mod in skel.model.named_modules():
        if mod is emb:
            return skel.name_map[f"{name}.weight"]
    raise TensorpressError(f"cannot find the tensor {key} is tied to")
