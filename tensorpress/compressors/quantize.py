"""Quantization math shared by the quantizers: per-group parameters (min/max or an MSE-clipped range),
codes for given parameters, and round-to-nearest. The record they produce (QuantizedWeight) and its
conventions are in tensorpress/formats/quantized.py.
"""

from __future__ import annotations

import math

import torch

from tensorpress.formats.quantized import QuantizedWeight, QuantScheme, expand_groups


def minmax_params(
    w_min: torch.Tensor, w_max: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point from per-group extremes. Shapes (out, G) → (out, G), (out, G) | None.

    The scale is rounded to `scale_dtype` here, before any code is computed, so codes are chosen
    against the scale that will actually be stored.
    """
    w_min = torch.minimum(w_min, torch.zeros_like(w_min)).float()
    w_max = torch.maximum(w_max, torch.zeros_like(w_max)).float()
    levels = (1 << scheme.bits) - 1
    if scheme.symmetric:
        amax = torch.maximum(-w_min, w_max)
        scale = amax / (levels / 2)
    else:
        scale = (w_max - w_min) / levels
    # An all-zero group gets scale 1: its codes are then 0 and it dequantizes to exactly 0.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(scale_dtype)
    if scheme.symmetric:
        return scale, None
    zero = torch.round(-w_min / scale.float()) + scheme.qmin
    zero = zero.clamp(scheme.qmin, scheme.qmax).to(torch.int8)
    return scale, zero


def group_extremes(w: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group min and max of an (out, in) weight → two (out, G) tensors."""
    out_f, in_f = w.shape
    g = scheme.group_len(in_f)
    n_groups = scheme.groups(in_f)
    pad = n_groups * g - in_f
    if pad:
        # Pad the short last group with its own first value so padding never moves min or max.
        filler = w[:, (n_groups - 1) * g : (n_groups - 1) * g + 1].expand(out_f, pad)
        w = torch.cat([w, filler], dim=1)
    w = w.reshape(out_f, n_groups, g)
    return w.amin(dim=2), w.amax(dim=2)


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, scheme: QuantScheme) -> torch.Tensor:
    """Codes for an (out, in) or (out, k) slice given per-column scale and zero. Returns int8.

    `scale`/`zero` must already be expanded to w's shape (or broadcastable to it).
    """
    q = torch.round(w.float() / scale.float())
    if zero is not None:
        q = q + zero.float()
    return q.clamp(scheme.qmin, scheme.qmax).to(torch.int8)


def rtn_quantize(w: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype) -> QuantizedWeight:
    """Round-to-nearest: min/max parameters per group, then round every weight. w: (out, in)."""
    w = w.float()
    w_min, w_max = group_extremes(w, scheme)
    scale, zero = minmax_params(w_min, w_max, scheme, scale_dtype)
    in_f = w.shape[1]
    z = expand_groups(zero, in_f, scheme) if zero is not None else None
    codes = quantize_with(w, expand_groups(scale, in_f, scheme), z, scheme)
    return QuantizedWeight(scheme, codes, scale, zero)


def group_params(
    W: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype, mse_clip: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale/zero for each group of columns of W (out, k). Returns (out, G) tensors."""
    lo, hi = group_extremes(W, scheme)
    if not mse_clip:
        return minmax_params(lo, hi, scheme, scale_dtype)
    return mse_params(W, lo, hi, scheme, scale_dtype)


def mse_params(
    W: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scheme: QuantScheme,
    scale_dtype: torch.dtype,
    grid: int = 20,
    max_shrink: float = 0.2,
    norm: float = 2.4,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shrink each group's range by p ∈ [1 - max_shrink, 1] to minimize Σ|w - q(w)|^norm (GPTQ's `mse`)."""
    out_f, in_f = W.shape
    g = scheme.group_len(in_f)
    G = scheme.groups(in_f)
    pad = G * g - in_f
    Wg = torch.nn.functional.pad(W, (0, pad)).reshape(out_f, G, g)  # padded columns are 0: harmless
    mask = torch.ones(in_f, device=W.device)
    mask = torch.nn.functional.pad(mask, (0, pad)).reshape(1, G, g)
    best_err = torch.full((out_f, G), math.inf, device=W.device)
    best_s, best_z = None, None
    for i in range(grid + 1):
        p = 1 - max_shrink * i / grid
        s, z = minmax_params(lo * p, hi * p, scheme, scale_dtype)
        zf = z.float()[..., None] if z is not None else 0.0
        q = torch.clamp(torch.round(Wg / s.float()[..., None]) + zf, scheme.qmin, scheme.qmax)
        err = (((q - zf) * s.float()[..., None] - Wg).abs().pow(norm) * mask).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = s if best_s is None else torch.where(better, s, best_s)
        if z is not None:
            best_z = z if best_z is None else torch.where(better, z, best_z)
    return best_s, best_z
