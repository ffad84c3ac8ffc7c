"""Multiple-choice knapsack: pick one candidate per module, minimizing the summed predicted loss under a
byte budget that is never exceeded.

Notation (n modules, candidate k of module i):
    cost[i][k]  bytes the module stores with candidate k (codes + scales + zeros), exact integers
    loss[i][k]  predicted increase of the model's KL with candidate k (any additive score)
    B           the budget in bytes
    minimize Σ_i loss[i][k_i]   subject to   Σ_i cost[i][k_i] ≤ B

Dynamic programming over the bytes above each module's cheapest candidate, in units of u bytes. When the
gcd of those extra costs keeps the table small, u is that gcd and the optimum is exact. Otherwise u is
larger and every extra cost is rounded *up* to whole units: a choice the table accepts can only cost
less than it believes, so the budget still holds; what rounding wastes (< n·u bytes, kept under 0.1% of
the budget by the table size) is then spent by a greedy fill on the exact costs.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

MAX_CELLS = 20_000_000  # n × (units + 1) entries of the choice table (int16: ≤ 40 MB, ~1 s)


class InfeasibleBudget(ValueError):
    """Even the cheapest candidate of every module exceeds the budget."""


def choose(cost: list[list[int]], loss: list[list[float]], budget: int) -> list[int]:
    """The candidate index per module minimizing Σ loss with Σ cost ≤ budget (see the module docstring)."""
    n = len(cost)
    if n == 0:
        return []
    base = [min(c) for c in cost]
    capacity = budget - sum(base)  # bytes left above the all-cheapest choice
    if capacity < 0:
        raise InfeasibleBudget(f"the cheapest candidates need {sum(base)} bytes, budget is {budget}")
    extra = [[c - b for c in row] for row, b in zip(cost, base, strict=True)]
    unit = _unit(extra, capacity, n)
    picks = _dp(extra, loss, capacity, unit)
    return fill(cost, loss, budget, picks)


def _unit(extra: list[list[int]], capacity: int, n: int) -> int:
    """Bytes per table column: the exact gcd when the table fits, else the smallest unit that does."""
    g = reduce(math.gcd, (e for row in extra for e in row if e), 0) or 1
    max_units = max(MAX_CELLS // n - 1, 1)
    if capacity // g <= max_units:
        return g
    return math.ceil(capacity / max_units)


def _dp(extra: list[list[int]], loss: list[list[float]], capacity: int, unit: int) -> list[int]:
    """Exact DP on costs ceil(extra / unit) with capacity floor(capacity / unit).

    best[c] (C+1,): least Σ loss of the modules so far using ≤ c units; how[i, c]: module i's choice there.
    """
    C = capacity // unit
    best = np.zeros(C + 1)  # no module yet: loss 0 whatever the capacity
    how = np.zeros((len(extra), C + 1), dtype=np.int16)
    for i, (row, vals) in enumerate(zip(extra, loss, strict=True)):
        new = np.full(C + 1, np.inf)
        for k, (e, v) in enumerate(zip(row, vals, strict=True)):
            w = -(-e // unit)  # ceil: a rounded cost is never below the true one
            if w > C:
                continue
            cand = best[: C + 1 - w] + v  # module i takes k: w units fewer for the modules before it
            better = cand < new[w:]
            new[w:][better] = cand[better]
            how[i, w:][better] = k
        best = new
    picks = [0] * len(extra)
    c = C
    for i in range(len(extra) - 1, -1, -1):
        k = int(how[i, c])
        picks[i] = k
        c -= -(-extra[i][k] // unit)
    return picks


def fill(cost: list[list[int]], loss: list[list[float]], budget: int, picks: list[int]) -> list[int]:
    """Spend bytes left under the budget (exact costs) on the swaps that lower Σ loss the most per byte."""
    picks = list(picks)
    left = budget - sum(cost[i][k] for i, k in enumerate(picks))
    while True:
        best, best_rate = None, 0.0
        for i, k in enumerate(picks):
            for j, (c, v) in enumerate(zip(cost[i], loss[i], strict=True)):
                dc, dv = c - cost[i][k], v - loss[i][k]
                if dv < 0 and dc <= left:
                    rate = -dv / max(dc, 1)
                    if rate > best_rate:
                        best, best_rate = (i, j), rate
        if best is None:
            return picks
        i, j = best
        left -= cost[i][j] - cost[i][picks[i]]
        picks[i] = j
