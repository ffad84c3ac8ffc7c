"""Allocate: the knapsack over the measured ΔKL under the byte budget, and the record kept in outputs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from tensorpress.formats.quantized import QuantScheme
from tensorpress.infra.atomic import write_text_atomic
from tensorpress.pipeline.auto import knapsack
from tensorpress.pipeline.auto.budget import BudgetConfig
from tensorpress.pipeline.auto.candidates import describe
from tensorpress.pipeline.auto.measure import measure, measurement_cache
from tensorpress.pipeline.auto.problem import Problem


@dataclass
class Allocation:
    """The chosen scheme per module and what the report shows about it."""

    schemes: dict[str, QuantScheme]
    info: dict = field(default_factory=dict)


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
        "candidates": [describe(s) for s in problem.candidates],
        "modules": {
            n: {**describe(per_module[i][k]), "bytes": costs[i][k], "predicted_kl": loss[i][k]}
            for i, (n, k) in enumerate(zip(names, picks, strict=True))
        },
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return Allocation({n: per_module[i][k] for i, (n, k) in enumerate(zip(names, picks, strict=True))}, info)
