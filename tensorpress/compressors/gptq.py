"""GPTQ (Frantar et al., 2022): quantize W column by column, folding each column's rounding error into
the columns not yet quantized through the inverse Hessian of the layer's inputs.

Names follow the paper and the reference implementation: H = Σ x xᵀ, Hinv the upper Cholesky factor
of H⁻¹, blocks of `block_size` columns with lazy batch updates (Err1 @ Hinv[block, rest]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from tensorpress.compressors.base import Compressor, ConfigError, LayerWork
from tensorpress.compressors.rtn import validate_scheme
from tensorpress.formats.quantized import QuantizedWeight, QuantScheme, group_extremes, minmax_params


@dataclass
class GPTQConfig:
    bits: int = 4
    group_size: int = 64  # -1: per output channel; need not divide in_features
    symmetric: bool = True
    actorder: Literal["off", "static"] | bool = "off"  # static: descending diag(H) order, groups in original order
    block_size: int = 128  # columns per lazy batch update
    dampening: float = 0.01  # fraction of mean diag(H) added to the diagonal
    mse_clip: bool = False  # search a shrunk range per group (minimizing |w - q(w)|^2.4) instead of min/max
    true_sequential: bool = True  # quantize q/k/v, then o, then gate/up, then down, re-collecting H between

    def validate(self) -> None:
        validate_scheme(self.bits, self.group_size)
        if self.block_size < 1:
            raise ConfigError("block_size", f"must be ≥ 1, got {self.block_size}")
        if not 0 < self.dampening < 1:
            raise ConfigError("dampening", f"must be in (0, 1), got {self.dampening}")

    def scheme(self) -> QuantScheme:
        return QuantScheme(self.bits, self.group_size, self.symmetric)

    @property
    def act_order(self) -> bool:
        return self.actorder in (True, "static")


@dataclass
class GPTQResult:
    qw: QuantizedWeight | None  # None when run without a scheme (SparseGPT pruning alone)
    dampening: float  # the relative dampening that finally worked
    retries: int
    loss: float  # Σ over rows of the OBS loss (w - q)² / [H⁻¹]_jj, as in the reference
    dense: torch.Tensor | None = None  # (out, in) the compressed weight, original column order
    pruned: torch.Tensor | None = None  # (out, in) bool, True where `prune` zeroed the weight


# prune(W1, d1, i1, i, M1): called before column i of the block starting at column i1; may mark weights
# of the block as pruned in M1 (out, count) bool, from the current block W1 and d1 = diag(Hinv) of the
# block (SparseGPT's adaptive mask selection). Pruned weights become exactly 0 and their error is
# spread over the remaining columns like a rounding error.
PruneHook = Callable[[torch.Tensor, torch.Tensor, int, int, torch.Tensor], None]


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


def _inverse_hessian_factor(H: torch.Tensor, dampening: float, max_retries: int = 6) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = damp · mean diag(H); damp grows ×10 on failure."""
    mean_diag = torch.mean(torch.diag(H))
    damp = dampening
    for retry in range(max_retries + 1):
        Hd = H.clone()
        Hd.diagonal().add_(damp * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0 and bool(torch.isfinite(U).all()):
                return U, damp, retry
        damp *= 10
    raise ValueError(f"Hessian is not positive definite even with dampening {damp / 10:g}")


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    scheme: QuantScheme | None,
    scale_dtype: torch.dtype,
    block_size: int = 128,
    dampening: float = 0.01,
    act_order: bool = False,
    mse_clip: bool = False,
    prune: PruneHook | None = None,
) -> GPTQResult:
    """Quantize W (out, in) against H (in, in). Returns codes in the original column order.

    With `prune` the same sweep also prunes (SparseGPT; joint pruning + quantization when `scheme` is
    set); with `scheme=None` nothing is rounded and only pruning happens.
    """
    quantize = scheme is not None
    scheme = scheme or QuantScheme(8, -1, True)  # layout only; unused when not quantizing
    W = W.float().clone()
    H = H.float().clone()
    out_f, in_f = W.shape
    gl = scheme.group_len(in_f)
    G = scheme.groups(in_f)

    dead = torch.diag(H) == 0  # inputs that were always zero: their weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0

    # Static groups: with act-order every group's parameters come from the original W, so codes keep
    # their contiguous-group layout and no g_idx is needed at inference.
    static = act_order or scheme.group_size == -1
    scale = torch.empty(out_f, G, dtype=scale_dtype, device=W.device)
    zero = None if scheme.symmetric else torch.empty(out_f, G, dtype=torch.int8, device=W.device)
    if static:
        s_all, z_all = group_params(W, scheme, scale_dtype, mse_clip)
        scale.copy_(s_all)
        if zero is not None:
            zero.copy_(z_all)

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f, device=W.device)
    W = W[:, perm]
    H = H[perm][:, perm]
    Hinv, damp, retries = _inverse_hessian_factor(H, dampening)

    # The sweep works on Wᵀ (in, out): column j of W is the contiguous row j, so every per-column read and
    # rank-1 update touches contiguous memory (the reference's (out, in) layout reads strided columns).
    WT = W.t().contiguous()  # (in, out), permuted column order
    group_of = perm // gl  # (in,) original group of each permuted column
    S_p = Z_p = None
    if quantize and static:  # per-column scale/zero in permuted order, gathered once
        S_p = scale.float()[:, group_of].t().contiguous()  # (in, out)
        Z_p = zero.float()[:, group_of].t().contiguous() if zero is not None else None
    codesT = torch.empty(in_f, out_f, dtype=torch.int8, device=W.device)  # permuted order
    QT = torch.empty_like(WT)
    prunedT = torch.zeros(in_f, out_f, dtype=torch.bool, device=W.device) if prune is not None else None
    loss = torch.zeros((), device=W.device)
    perm_l, group_l = perm.tolist(), group_of.tolist()

    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = WT[i1:i2].clone()  # (count, out)
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        M1 = torch.zeros_like(W1, dtype=torch.bool) if prune is not None else None
        for i in range(i2 - i1):
            j = i1 + i  # permuted column index
            col, g = perm_l[j], group_l[j]  # original column index, its group
            if M1 is not None:  # the hook sees the (out, count) layout
                prune(W1.t(), torch.diag(Hinv1), i1, i, M1.t())
            if quantize and not static and col % gl == 0:
                # Lazy groups: parameters from the group's current (already error-updated) weights.
                cur = torch.cat([W1[i:], WT[i2:]], dim=0)[: min(gl, in_f - col)].t()
                sc, z = group_params(cur, QuantScheme(scheme.bits, -1, scheme.symmetric), scale_dtype, mse_clip)
                scale[:, g] = sc[:, 0]
                if zero is not None:
                    zero[:, g] = z[:, 0]
            w = W1[i]  # (out,)
            d = Hinv1[i, i]
            zf = 0.0
            if quantize:
                if S_p is not None:
                    sc = S_p[j]
                    zf = Z_p[j] if Z_p is not None else 0.0
                else:
                    sc = scale[:, g].float()
                    zf = zero[:, g].float() if zero is not None else 0.0
                q_int = torch.clamp(torch.round(w / sc) + zf, scheme.qmin, scheme.qmax)
                q = (q_int - zf) * sc
            else:
                q_int, q = torch.zeros_like(w), w.clone()
            if M1 is not None:  # pruned: exactly zero (the zero point's code dequantizes to 0)
                q = q.masked_fill(M1[i], 0.0)
                q_int = torch.where(M1[i], torch.as_tensor(zf), q_int)
            codesT[j] = q_int
            Q1[i] = q
            err1 = (w - q) / d  # (out,)
            W1[i:].addr_(Hinv1[i, i:], err1, alpha=-1)  # W1[i:] -= Hinv1[i, i:] ⊗ err1
            Err1[i] = err1
        WT[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1)  # lazy batch update of the later columns
        QT[i1:i2] = Q1
        loss += Err1.square().sum() / 2  # Σ (w - q)² / [H⁻¹]_jj² / 2
        if M1 is not None:
            prunedT[i1:i2] = M1

    inv = torch.argsort(perm)
    qw = QuantizedWeight(scheme, codesT[inv].t().contiguous(), scale, zero) if quantize else None
    dense = QT[inv].t().contiguous()
    pruned = prunedT[inv].t().contiguous() if prunedT is not None else None
    return GPTQResult(qw, damp, retries, float(loss), dense, pruned)


class GPTQ(Compressor):
    name = "gptq"
    Config = GPTQConfig
    needs_calibration = True
    quantizes = True
    summary = "GPTQ: Hessian-aware integer quantization with lazy block updates, act-order, groups of any size"

    def apply(self, work: LayerWork, targets: list[str]) -> None:
        from tensorpress.calibration.stats import compress_by_stage

        compress_by_stage(work, targets, partial(self._stage, work), self.config.true_sequential)

    def _stage(self, work: LayerWork, stage: list[str], hessians: dict) -> None:
        """Quantize one group of modules against their (shared) Hessians."""
        from tensorpress.compressors.prune import finish_pruned_quantization, prune_hook_for

        # Modules fed the same input (q/k/v, gate/up) share H: quantizing their stacked rows in one
        # call gives exactly the per-module result (rows are independent given H) with one Cholesky
        # and one column loop instead of several.
        shared: dict[int, list[str]] = {}
        for name in stage:
            hess = hessians.get(name)
            plain = hess is not None and hess.n > 0 and prune_hook_for(work, name) is None
            shared.setdefault(id(hess) if plain else id(name), []).append(name)
        for names in shared.values():
            hess = hessians.get(names[0])
            Ws = [work.weight(n) for n in names]
            if hess is None or hess.n == 0:
                work.notes.append(f"gptq: {names[0]} saw no calibration tokens; quantized with RTN")
                H = torch.eye(Ws[0].shape[1], device=Ws[0].device)
            else:
                H = hess.H
            prune = prune_hook_for(work, names[0]) if len(names) == 1 else None
            res = self._quantize(work, names, torch.cat(Ws), H, prune)
            row = 0
            for name, W in zip(names, Ws, strict=True):
                rows = slice(row, row + W.shape[0])
                row += W.shape[0]
                qw = res.qw if len(names) == 1 else _rows(res.qw, rows)
                work.set_weight(name, qw.dequantize())
                work.quantized[name] = qw
                if prune is not None:
                    finish_pruned_quantization(work, name, res)

    def _quantize(self, work: LayerWork, names: list[str], W: torch.Tensor, H: torch.Tensor, prune) -> GPTQResult:
        cfg: GPTQConfig = self.config
        try:
            res = gptq_quantize(
                W,
                H,
                cfg.scheme(),
                work.scale_dtype,
                cfg.block_size,
                cfg.dampening,
                cfg.act_order,
                cfg.mse_clip,
                prune=prune,
            )
        except ValueError as e:
            from tensorpress.errors import TensorpressError

            raise TensorpressError(f"gptq: {', '.join(names)}: {e}") from e
        if res.retries:
            work.notes.append(
                f"gptq: {', '.join(names)}: Cholesky failed at dampening {cfg.dampening:g}; "
                f"succeeded at {res.dampening:g} after {res.retries} retr{'y' if res.retries == 1 else 'ies'}"
            )
        return res


def _rows(qw: QuantizedWeight, rows: slice) -> QuantizedWeight:
    """The quantized weight of a block of rows (one module of a stacked call)."""
    zero = qw.zero[rows].contiguous() if qw.zero is not None else None
    return QuantizedWeight(qw.scheme, qw.codes[rows].contiguous(), qw.scale[rows].contiguous(), zero)
