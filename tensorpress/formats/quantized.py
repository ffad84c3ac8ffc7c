"""Integer weight quantization math: group layout, quantization parameters, quantize, dequantize.

Conventions follow the compressed-tensors `pack-quantized` format so that what the pipeline computes
with is bit-for-bit what transformers/vLLM will compute with after loading:

- codes are signed: b bits hold q ∈ [-2^(b-1), 2^(b-1)-1];
- W ≈ (q - z) · s with s stored in the checkpoint's dtype; the product is formed in float32, which is
  what transformers computes when it loads the output in float32 (and, rounded once, in bf16);
- symmetric: z = 0 and s = max|w| / ((2^b - 1) / 2), so every one of the 2^b levels is used;
- asymmetric: s = (max(w,0) - min(w,0)) / (2^b - 1) and z = round(-min/s) - 2^(b-1);
- groups run along the input dimension; the last group may be shorter when group_size does not
  divide in_features (most tools reject that; a 576-wide model needs it for g=128).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantScheme:
    """How one weight matrix is quantized. group_size = -1 means one group per output channel."""

    bits: int
    group_size: int = 64
    symmetric: bool = True

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def groups(self, in_features: int) -> int:
        """Number of groups along the input dimension (the last one may be shorter)."""
        if self.group_size == -1:
            return 1
        return math.ceil(in_features / self.group_size)

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size


@dataclass
class QuantizedWeight:
    """A quantized (out, in) weight: integer codes plus per-group scale and zero point."""

    scheme: QuantScheme
    codes: torch.Tensor  # (out, in) int8, values in [qmin, qmax]
    scale: torch.Tensor  # (out, G) in the checkpoint dtype
    zero: torch.Tensor | None  # (out, G) int8, signed; None when symmetric

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero, self.scheme)


def group_index(in_features: int, scheme: QuantScheme, device: torch.device | None = None) -> torch.Tensor:
    """g_idx[j] = the group of input column j. Shape (in,)."""
    return torch.arange(in_features, device=device) // scheme.group_len(in_features)


def expand_groups(x: torch.Tensor, in_features: int, scheme: QuantScheme) -> torch.Tensor:
    """(out, G) per-group values → (out, in) per-column values."""
    return x[:, group_index(in_features, scheme, x.device)]


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


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, scheme: QuantScheme
) -> torch.Tensor:
    """(q - z) · s in float32 → (out, in). Cast the result to the checkpoint dtype where needed."""
    in_f = codes.shape[1]
    s = expand_groups(scale, in_f, scheme).float()
    w = codes.float()
    if zero is not None:
        w = w - expand_groups(zero, in_f, scheme).float()
    return w * s


def rtn_quantize(w: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype) -> QuantizedWeight:
    """Round-to-nearest: min/max parameters per group, then round every weight. w: (out, in)."""
    w = w.float()
    w_min, w_max = group_extremes(w, scheme)
    scale, zero = minmax_params(w_min, w_max, scheme, scale_dtype)
    in_f = w.shape[1]
    z = expand_groups(zero, in_f, scheme) if zero is not None else None
    codes = quantize_with(w, expand_groups(scale, in_f, scheme), z, scheme)
    return QuantizedWeight(scheme, codes, scale, zero)
