"""The quantized-weight record and its group layout: scheme, codes, scales, zero points, dequantize.

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
    """How one weight matrix is quantized. group_size = -1 means one group per output channel.

    `ggml` names a llama.cpp block type (GGUF output): the weight then goes on that type's exact grid
    (formats/ggml_types.py) and bits/group_size/symmetric describe it only approximately (code bits,
    sub-block length, whether it has mins), for reports and for AWQ's search.
    """

    bits: int
    group_size: int = 64
    symmetric: bool = True
    ggml: str | None = None

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

    def whole_groups(self, in_features: int) -> bool:
        """Every group full (per channel, or group_size divides in_features): compressed-tensors rejects a
        shorter last group."""
        return self.group_size == -1 or in_features % self.group_size == 0


@dataclass
class QuantizedWeight:
    """A quantized (out, in) weight: integer codes plus per-group scale and zero point."""

    scheme: QuantScheme
    codes: torch.Tensor  # (out, in) int8, values in [qmin, qmax]
    scale: torch.Tensor  # (out, G) in the checkpoint dtype
    zero: torch.Tensor | None  # (out, G) int8, signed; None when symmetric

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero, self.scheme)

    def divide_rows(self, s: torch.Tensor) -> None:
        """Divide output row r by s[r] (a fold into an already quantized producer): scales only, codes kept."""
        self.scale = (self.scale.float() / s[:, None].to(self.scale.device)).to(self.scale.dtype)

    def rows(self, rows: slice) -> QuantizedWeight:
        """The quantized weight of a block of rows (one module of a stacked call)."""
        zero = self.zero[rows].contiguous() if self.zero is not None else None
        return QuantizedWeight(self.scheme, self.codes[rows].contiguous(), self.scale[rows].contiguous(), zero)


def group_index(in_features: int, scheme: QuantScheme, device: torch.device | None = None) -> torch.Tensor:
    """g_idx[j] = the group of input column j. Shape (in,)."""
    return torch.arange(in_features, device=device) // scheme.group_len(in_features)


def expand_groups(x: torch.Tensor, in_features: int, scheme: QuantScheme) -> torch.Tensor:
    """(out, G) per-group values → (out, in) per-column values."""
    return x[:, group_index(in_features, scheme, x.device)]


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
