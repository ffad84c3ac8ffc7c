"""The GPTQ / SparseGPT sweep (Frantar et al., 2022, 2023): quantize and/or prune W column by column, folding
each column's error into the columns not yet done through the inverse Hessian of the layer's inputs.

Names follow the paper and the reference implementation: H = Σ x xᵀ, Hinv the upper Cholesky factor
of H⁻¹, blocks of `block_size` columns with lazy batch updates (Err1 @ Hinv[block, rest]). Shared by the
`gptq` compressor and SparseGPT pruning (`prune`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tensorpress.compressors.gptq_grids import make_grid
from tensorpress.formats.ggml_types import GGMLQuantized
from tensorpress.formats.quantized import QuantizedWeight, QuantScheme


@dataclass
class GPTQResult:
    qw: QuantizedWeight | GGMLQuantized | None  # None when run without a scheme (SparseGPT pruning alone)
    dampening: float  # the relative dampening that finally worked
    retries: int
    loss: float  # Σ over rows of the OBS loss (w - q)² / (2 U_jj²), U = upper Cholesky factor of H⁻¹ (the reference's)
    dense: torch.Tensor | None = None  # (out, in) the compressed weight, original column order
    pruned: torch.Tensor | None = None  # (out, in) bool, True where `prune` zeroed the weight


# prune(W1, d1, i1, i, M1): called before column i of the block starting at column i1; may mark weights
# of the block as pruned in M1 (out, count) bool, from the current block W1 and d1 = diag(Hinv) of the
# block (SparseGPT's adaptive mask selection). Pruned weights become exactly 0 and their error is
# spread over the remaining columns like a rounding error.
PruneHook = Callable[[torch.Tensor, torch.Tensor, int, int, torch.Tensor], None]


def blend_diagonal(H: torch.Tensor, beta: float) -> torch.Tensor:
    """(1 − β)·H + β·diag(H): shrinks the off-diagonal (cross-channel) statistics toward zero.

    The diagonal is unchanged, so everything weighted by diag H (grid fits, act-order) is too; only
    the error feedback through the inverse Hessian relies less on correlations of the calibration text.
    """
    if beta == 0:
        return H
    d = torch.diag(H).clone()
    H = H * (1 - beta)
    H.diagonal().copy_(d)
    return H


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
    hessian_blend: float = 0.0,
) -> GPTQResult:
    """Quantize W (out, in) against H (in, in). Returns codes in the original column order.

    With `prune` the same sweep also prunes (SparseGPT; joint pruning + quantization when `scheme` is
    set); with `scheme=None` nothing is rounded and only pruning happens. `hessian_blend` β replaces H
    by (1 − β)·H + β·diag(H) before dampening (see `blend_diagonal`).
    """
    quantize = scheme is not None
    scheme = scheme or QuantScheme(8, -1, True)  # layout only; unused when not quantizing
    W = W.float().clone()
    H = H.float().clone()
    out_f, in_f = W.shape

    dead = torch.diag(H) == 0  # inputs that were always zero: their weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0

    grid = make_grid(scheme, W, H, scale_dtype, mse_clip)
    span = grid.span
    # Static groups: with act-order every group's parameters come from the original W, so codes keep
    # their contiguous-group layout and no g_idx is needed at inference.
    static = act_order or span == in_f
    if quantize and static:
        grid.fit_all(W)

    H = blend_diagonal(H, hessian_blend)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f, device=W.device)
    W = W[:, perm]
    H = H[perm][:, perm]
    Hinv, damp, retries = _inverse_hessian_factor(H, dampening)

    # The sweep works on Wᵀ (in, out): column j of W is the contiguous row j, so every per-column read and
    # rank-1 update touches contiguous memory (the reference's (out, in) layout reads strided columns).
    WT = W.t().contiguous()  # (in, out), permuted column order
    codesT = torch.empty(in_f, out_f, dtype=torch.int8, device=W.device)  # permuted order
    QT = torch.empty_like(WT)
    prunedT = torch.zeros(in_f, out_f, dtype=torch.bool, device=W.device) if prune is not None else None
    loss = torch.zeros((), device=W.device)
    perm_l = perm.tolist()

    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = WT[i1:i2].clone()  # (count, out)
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        M1 = torch.zeros_like(W1, dtype=torch.bool) if prune is not None else None
        for i in range(i2 - i1):
            j = i1 + i  # permuted column index
            col = perm_l[j]  # original column index
            if M1 is not None:  # the hook sees the (out, count) layout
                prune(W1.t(), torch.diag(Hinv1), i1, i, M1.t())
            if quantize and not static and col % span == 0:
                # Lazy groups: parameters from the group's current (already error-updated) weights.
                grid.fit(torch.cat([W1[i:], WT[i2:]], dim=0)[: min(span, in_f - col)].t(), col)
            w = W1[i]  # (out,)
            d = Hinv1[i, i]
            if quantize:
                q_int, q = grid.round(w, col)
            else:
                q_int, q = torch.zeros_like(w), w.clone()
            if M1 is not None:  # pruned: exactly zero (the zero point's code dequantizes to 0)
                q = q.masked_fill(M1[i], 0.0)
                q_int = torch.where(M1[i], grid.zero_code(col), q_int)
            codesT[j] = q_int
            Q1[i] = q
            err1 = (w - q) / d  # (out,)
            W1[i:].addr_(Hinv1[i, i:], err1, alpha=-1)  # W1[i:] -= Hinv1[i, i:] ⊗ err1
            Err1[i] = err1
        WT[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1)  # lazy batch update of the later columns
        QT[i1:i2] = Q1
        loss += Err1.square().sum() / 2  # Σ (w - q)² / U_jj² / 2
        if M1 is not None:
            prunedT[i1:i2] = M1

    inv = torch.argsort(perm)
    qw = grid.record(codesT[inv].t().contiguous()) if quantize else None
    dense = QT[inv].t().contiguous()
    pruned = prunedT[inv].t().contiguous() if prunedT is not None else None
    return GPTQResult(qw, damp, retries, float(loss), dense, pruned)
