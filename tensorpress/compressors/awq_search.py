"""AWQ's search as plain math: scales s = mean|x|^α (or the duo form), the consumers' quantized output error
tr(ΔW H ΔWᵀ) over the α grid, per-group clip search, and the grouped-query map of v_proj channels onto
o_proj columns. No modules here: tensors in, tensors out (see awq.py for the method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tensorpress.compressors.gptq_sweep import blend_diagonal
from tensorpress.compressors.quantize import rtn_quantize
from tensorpress.formats.quantized import QuantScheme


def fake_quant(W: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype) -> torch.Tensor:
    """Q(W): round-to-nearest and back, (out, in) → (out, in) float32."""
    return rtn_quantize(W, scheme, scale_dtype).dequantize()


def group_weight_mean(W: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """mean over rows of |w| / max|w| of its group, per input column: (out, in) → (in,)."""
    out_f, in_f = W.shape
    g = scheme.group_len(in_f)
    G = scheme.groups(in_f)
    pad = G * g - in_f
    Wg = torch.nn.functional.pad(W.abs(), (0, pad)).reshape(out_f, G, g)
    Wg = Wg / Wg.amax(dim=2, keepdim=True).clamp_min(1e-12)
    return Wg.reshape(out_f, G * g)[:, :in_f].mean(0)


def awq_scales(x_mean: torch.Tensor, alpha: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """s = x̄^α (or x̄^α / w̄^(1-α)), normalized so that max(s) · min(s) = 1. Shapes (k,) → (k,)."""
    if w_mean is None:
        s = x_mean.clamp_min(1e-4).pow(alpha)
    else:
        s = (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp_min(1e-4)
    return s / torch.sqrt(s.max() * s.min())


def output_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Ŵ) H (W - Ŵ)ᵀ) = Σ over tokens of |(W - Ŵ) x|²."""
    D = W - Wq  # (out, in)
    return float(((D @ H) * D).sum())


def reduce_to(values: torch.Tensor, col_map: torch.Tensor | None, k: int) -> torch.Tensor:
    """Mean of per-column values over the columns sharing a scale: (in,) → (k,)."""
    if col_map is None:
        return values
    out = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, col_map, values)
    count = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, col_map, torch.ones_like(values))
    return out / count.clamp_min(1)


def alpha_steps(grid: int, max_alpha: float) -> int:
    """How many grid points i/grid, i = 0, 1, …, lie at or below `max_alpha`."""
    return math.floor(max_alpha * grid + 1e-9) + 1


@dataclass
class ScaleSearch:
    scales: torch.Tensor  # (k,) the chosen s (all ones when α = 0 won)
    alpha: float
    loss0: float  # error without scaling
    loss: float  # error with the chosen scaling


def search_scales_linear(
    consumers: list[tuple[torch.Tensor, QuantScheme]],
    H: torch.Tensor,
    x_mean: torch.Tensor,
    scale_dtype: torch.dtype,
    grid: int,
    duo: bool,
    col_map: torch.Tensor | None = None,
    max_alpha: float = 1.0,
    hessian_blend: float = 0.0,
) -> ScaleSearch:
    """Grid search of α for consumers (W_l (out_l, in), scheme_l) sharing input statistics H (in, in).

    `col_map` (in,) maps each input column to the scale it shares (grouped-query v→o); None: its own.
    Only α ≤ `max_alpha` are tried; `hessian_blend` β scores with (1 − β)·H + β·diag(H).
    """
    H = blend_diagonal(H, hessian_blend)
    k = int(col_map.max()) + 1 if col_map is not None else x_mean.numel()
    xk = reduce_to(x_mean, col_map, k)
    wk = None
    if duo:
        wk = reduce_to(sum(group_weight_mean(W, sch) for W, sch in consumers) / len(consumers), col_map, k)
    best = None
    for i in range(alpha_steps(grid, max_alpha)):
        alpha = i / grid
        s = awq_scales(xk, alpha, wk) if i else torch.ones_like(xk)
        cols = s[col_map] if col_map is not None else s  # (in,)
        loss = sum(output_error(W, fake_quant(W * cols, sch, scale_dtype) / cols, H) for W, sch in consumers)
        if best is None or loss < best.loss:
            best = ScaleSearch(s, alpha, best.loss0 if best else loss, loss)
    assert best is not None
    return best


def clip_search(
    W: torch.Tensor, H: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype, grid: int, max_shrink: float
) -> torch.Tensor:
    """Per (row, group) clipping threshold minimizing that group's output error Δ_g H_gg Δ_gᵀ.

    Cross-group terms of H are ignored, as in AWQ's auto_clip. Returns the clipped W (out, in).
    """
    out_f, in_f = W.shape
    g = scheme.group_len(in_f)
    G = scheme.groups(in_f)
    pad = G * g - in_f
    Wp = torch.nn.functional.pad(W, (0, pad))  # (out, G·g)
    Hp = torch.nn.functional.pad(H, (0, pad, 0, pad))
    Hb = torch.stack([Hp[j * g : (j + 1) * g, j * g : (j + 1) * g] for j in range(G)])  # (G, g, g)
    Wg = Wp.reshape(out_f, G, g)
    amax = Wg.abs().amax(dim=2, keepdim=True)  # (out, G, 1)
    per_group = QuantScheme(scheme.bits, g, scheme.symmetric)
    best_err = torch.full((out_f, G), math.inf, device=W.device)
    best_max = amax.clone()
    for i in range(grid + 1):
        m = amax * (1 - max_shrink * i / grid)
        Wc = torch.maximum(torch.minimum(Wg, m), -m)
        D = Wg - fake_quant(Wc.reshape(out_f, G * g), per_group, scale_dtype).reshape(out_f, G, g)
        err = torch.einsum("ogi,gij,ogj->og", D, Hb, D)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better[..., None], m, best_max)
    Wc = torch.maximum(torch.minimum(Wg, best_max), -best_max)
    return Wc.reshape(out_f, G * g)[:, :in_f]


def head_map(v_out: int, o_in: int, head_dim: int | None) -> torch.Tensor | None:
    """o_proj input column j ← v_proj output channel it carries (grouped-query attention repeats kv heads)."""
    if v_out == o_in:
        return None
    if not head_dim or o_in % v_out or v_out % head_dim:
        raise ValueError(f"cannot map {o_in} attention outputs onto {v_out} value channels")
    rep = o_in // v_out
    j = torch.arange(o_in)
    return (j // head_dim // rep) * head_dim + j % head_dim
