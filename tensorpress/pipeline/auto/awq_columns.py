"""AWQ-aware candidate errors for automatic precision.

When the recipe scales with AWQ before quantizing, what a candidate costs is the error of rounding the
*scaled* weight: AWQ moves error away from the input channels that carry large activations, and it does
that most where plain rounding hurts most — an allocation measured on unscaled weights spends bits on
modules AWQ would have fixed anyway (on the sample: uniform 3-bit gains 26% KL from AWQ, the unscaled
allocation at 3.5 bits only 5%). So per candidate c the measurement runs AWQ's own linear search (on a
coarser α grid) for the modules sharing an input, and scores

    ΔW(c) = (Q_c(W · diag(s_c)) − W · diag(s_c)) · diag(s_c)⁻¹     (out, in)

the rounding error in the original coordinates (the producer's side of the fold — a norm's weight or a
Linear's rows — changes no error). AWQ's clipping search is not modelled. Opt-in (`budget.awq_scaled`):
on the sample it changed the allocation but not the measured KL, at 1.3× the measurement time.
"""

from __future__ import annotations

import torch

from tensorpress.calibration.stats import Hessian
from tensorpress.compressors.awq_edges import LINEAR_EDGES, linear_col_map
from tensorpress.compressors.awq_search import search_scales_linear
from tensorpress.compressors.ggml_fit import search_scheme
from tensorpress.formats.quantized import QuantScheme

ESTIMATE_GRID = 5  # α ∈ {0, 0.2, …, 1}: the estimate needs the scale's size, not its last digit


def awq_step(rec):
    """The recipe's awq step config, or None."""
    return next((s.config for s in rec.steps if s.name == "awq"), None)


def column_map(layer, prefix: str, name: str, names: list[str]) -> torch.Tensor | None:
    """For a consumer AWQ scales through a preceding Linear (v→o with grouped-query heads), the column →
    scale map; None where every column has its own scale (or the heads cannot be mapped: AWQ skips that
    edge, and the estimate then lets every column scale on its own)."""
    for prev_rel, next_rel in LINEAR_EDGES:
        if name == prefix + next_rel and prefix + prev_rel in names:
            try:
                return linear_col_map(layer, prev_rel, next_rel)
            except ValueError:
                return None
    return None


def candidate_columns(
    weights: dict[str, torch.Tensor],
    h: Hessian,
    candidates: list[QuantScheme],
    cfg,
    col_map: torch.Tensor | None,
) -> list[torch.Tensor | None]:
    """Per candidate, the column scales (in,) AWQ's linear search picks for these modules (sharing h), or
    None when α = 0 wins."""
    out: list[torch.Tensor | None] = []
    for sch in candidates:
        found = search_scales_linear(
            [(W, search_scheme(sch)) for W in weights.values()],
            h.H,
            h.mean_abs(),
            torch.float32,
            min(ESTIMATE_GRID, cfg.grid),
            cfg.duo_scaling,
            col_map,
        )
        out.append(None if found.alpha == 0 else (found.scales[col_map] if col_map is not None else found.scales))
    return out
