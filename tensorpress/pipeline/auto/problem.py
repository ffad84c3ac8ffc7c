"""The allocation problem, known before any calibration work: modules, candidates, costs and the exact byte
budget (so range errors come first)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from tensorpress.calibration.sensitivity import module_shapes
from tensorpress.errors import TensorpressError
from tensorpress.formats.quantized import QuantScheme
from tensorpress.formats.safetensors_io import SHARD_BYTES
from tensorpress.pipeline.auto.budget import BudgetConfig, parse_size
from tensorpress.pipeline.auto.candidates import (
    candidate_schemes,
    gguf_candidates,
    label,
    module_candidates,
    quantizer_step,
    scale_bytes_of,
    stored_bytes,
)


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
    shards = 1 + (data + header) // SHARD_BYTES + 1
    return data + header + shards * (metadata_bytes + 64)


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
