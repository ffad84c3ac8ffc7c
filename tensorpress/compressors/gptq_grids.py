"""The grids GPTQ's sweep rounds onto: what a column's weights may become, fitted per group of columns.

- `IntGrid`: integer codes with a scale (and zero point) per group (compressed-tensors `pack-quantized`);
- `GGMLGrid`: a llama.cpp block type; every block's scales/mins are fitted (weighted by diag H, as
  llama.cpp weights by the imatrix) on the columns' current, error-updated weights when the sweep
  reaches the block, quantized to the type's own precision, and the block's weights then rounded onto
  that frozen grid one column at a time.

Both keep per-column parameters in (in, out) arrays indexed by the original column, so the sweep reads
one contiguous row per column whether it runs in order (lazy fitting) or in act-order (all fitted
before the sweep, from the original W).
"""

from __future__ import annotations

import torch

from tensorpress.compressors.ggml_fit import fit
from tensorpress.compressors.quantize import group_params
from tensorpress.formats.ggml_types import BlockParams, GGMLQuantized, ggml_type, grid, round_codes
from tensorpress.formats.quantized import QuantizedWeight, QuantScheme


class IntGrid:
    """Per-group integer scale/zero; w ≈ (q − z)·s with q ∈ [qmin, qmax]."""

    def __init__(self, scheme: QuantScheme, out_f: int, in_f: int, scale_dtype: torch.dtype, mse_clip: bool):
        self.scheme, self.scale_dtype, self.mse_clip = scheme, scale_dtype, mse_clip
        self.span = scheme.group_len(in_f)  # columns fitted together
        G = scheme.groups(in_f)
        self.scale = torch.ones(out_f, G, dtype=scale_dtype)
        self.zero = None if scheme.symmetric else torch.zeros(out_f, G, dtype=torch.int8)
        self.S = torch.ones(in_f, out_f)  # (in, out) per-column scale, float32
        self.Z = None if scheme.symmetric else torch.zeros(in_f, out_f)

    def fit(self, cur: torch.Tensor, col: int) -> None:
        """Parameters of the group starting at column `col` from its current weights cur (out, k)."""
        g = col // self.span
        per_channel = QuantScheme(self.scheme.bits, -1, self.scheme.symmetric)
        s, z = group_params(cur, per_channel, self.scale_dtype, self.mse_clip)
        self._set(g, s[:, 0], z[:, 0] if z is not None else None, cur.shape[1])

    def fit_all(self, W: torch.Tensor) -> None:
        """Every group's parameters from W (out, in) at once (act-order, per-channel)."""
        s_all, z_all = group_params(W, self.scheme, self.scale_dtype, self.mse_clip)
        for g in range(s_all.shape[1]):
            k = min(self.span, W.shape[1] - g * self.span)
            self._set(g, s_all[:, g], z_all[:, g] if z_all is not None else None, k)

    def _set(self, g: int, s: torch.Tensor, z: torch.Tensor | None, k: int) -> None:
        self.scale[:, g] = s
        cols = slice(g * self.span, g * self.span + k)
        self.S[cols] = s.float()[None, :]
        if z is not None:
            self.zero[:, g] = z
            self.Z[cols] = z.float()[None, :]

    def round(self, w: torch.Tensor, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes and dequantized values of column `col`'s weights w (out,)."""
        sc = self.S[col]
        zf = self.Z[col] if self.Z is not None else 0.0
        q_int = torch.clamp(torch.round(w / sc) + zf, self.scheme.qmin, self.scheme.qmax)
        return q_int, (q_int - zf) * sc

    def zero_code(self, col: int) -> torch.Tensor:
        """The code that dequantizes to exactly 0 in column `col` (for pruned weights)."""
        return self.Z[col] if self.Z is not None else torch.zeros(self.S.shape[1])

    def record(self, codes: torch.Tensor) -> QuantizedWeight:
        return QuantizedWeight(self.scheme, codes, self.scale, self.zero)


class GGMLGrid:
    """A llama.cpp block type's grid; w = s·q − o with (s, o) per sub-block, fitted per block."""

    def __init__(self, scheme: QuantScheme, out_f: int, in_f: int, importance: torch.Tensor):
        self.t = ggml_type(scheme.ggml or "")
        if in_f % self.t.block:
            raise ValueError(f"{self.t.name} needs rows that are a multiple of {self.t.block} wide, got {in_f}")
        self.span = self.t.block
        self.h = importance.float()  # (in,) e.g. diag H, original column order
        nb = in_f // self.t.block
        self.params: list[BlockParams | None] = [None] * nb
        self.S = torch.zeros(in_f, out_f)
        self.O = torch.zeros(in_f, out_f) if self.t.affine else None

    def fit(self, cur: torch.Tensor, col: int) -> None:
        """Fit block `col // block` on its current weights cur (out, block) and freeze its grid."""
        b = col // self.span
        cols = slice(col, col + self.span)
        h = self.h[cols].expand(cur.shape[0], -1)
        p = fit(self.t, cur[:, None, :].float(), h[:, None, :].contiguous())
        self.params[b] = p
        s, o = grid(self.t, p)  # (out, 1, nsub)
        self.S[cols] = s[:, 0].repeat_interleave(self.t.sub, dim=-1).t()
        if o is not None:
            self.O[cols] = o[:, 0].repeat_interleave(self.t.sub, dim=-1).t()

    def fit_all(self, W: torch.Tensor) -> None:
        for col in range(0, W.shape[1], self.span):
            self.fit(W[:, col : col + self.span], col)

    def round(self, w: torch.Tensor, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.S[col]
        o = self.O[col] if self.O is not None else None
        q_int = round_codes(w, s, o, self.t)
        q = s * q_int
        return q_int, (q - o if o is not None else q)

    def zero_code(self, col: int) -> torch.Tensor:
        raise ValueError(f"{self.t.name}: pruning inside the GPTQ sweep is not supported on GGUF grids")

    def record(self, codes: torch.Tensor) -> GGMLQuantized:
        ps = [p for p in self.params if p is not None]
        if len(ps) != len(self.params):
            raise RuntimeError("internal: a GGML block was never fitted")

        def cat(name: str) -> torch.Tensor | None:
            parts = [getattr(p, name) for p in ps]
            return torch.cat(parts, dim=1) if parts[0] is not None else None

        params = BlockParams(d=cat("d"), dmin=cat("dmin"), sc=cat("sc"), mi=cat("mi"), m=cat("m"))
        return GGMLQuantized(self.t, codes, params)


def make_grid(
    scheme: QuantScheme, W: torch.Tensor, H: torch.Tensor, scale_dtype: torch.dtype, mse_clip: bool
) -> IntGrid | GGMLGrid:
    out_f, in_f = W.shape
    if scheme.ggml is not None:
        return GGMLGrid(scheme, out_f, in_f, torch.diag(H).clone())
    return IntGrid(scheme, out_f, in_f, scale_dtype, mse_clip)
