"""Pruning math: which weights to drop (magnitude, Wanda, SparseGPT's adaptive selection), N:M
patterns, OWL's outlier-weighted layer sparsities, and the mask a quantizing sweep (GPTQ) must honour.
Masks are bool, True = kept, unless named `pruned`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.formats.sparse import SparseWeight


def parse_pattern(pattern: str) -> tuple[int, int]:
    """'N:M' → (n, m): n zeros in every m consecutive input weights (SparseGPT/Wanda convention)."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if not m:
        raise ValueError(f"must look like 'N:M' (e.g. '2:4'), got {pattern!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm or mm > 256:
        raise ValueError(f"needs 0 < N < M ≤ 256, got {pattern!r}")
    return n, mm


def nm_keep(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep all but the n lowest scores in every group of m consecutive columns. (out, in) → bool."""
    out_f, in_f = score.shape
    g = score.reshape(out_f, in_f // m, m)
    drop = torch.topk(g, n, dim=-1, largest=False).indices
    keep = torch.ones_like(g, dtype=torch.bool)
    keep.scatter_(-1, drop, False)
    return keep.reshape(out_f, in_f)


def lowest_keep(score: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Drop the fraction `sparsity` of lowest scores, per output row or over the whole matrix."""
    if per_row:
        k = int(score.shape[1] * sparsity)
        keep = torch.ones_like(score, dtype=torch.bool)
        if k:
            keep.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, False)
        return keep
    k = int(score.numel() * sparsity)
    if not k:
        return torch.ones_like(score, dtype=torch.bool)
    flat = score.flatten()
    keep = flat > flat.kthvalue(k).values
    ties = int(k - (~keep).sum())  # scores equal to the threshold that must stay: keep the first ones
    if ties < 0:
        tied = torch.nonzero(flat == flat.kthvalue(k).values).squeeze(1)
        keep[tied[:-ties]] = True
    return keep.reshape(score.shape)


def magnitude_keep(W: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """|W|, compared over the whole matrix (the magnitude baseline of the Wanda/SparseGPT papers)."""
    score = W.abs()
    return nm_keep(score, *nm) if nm else lowest_keep(score, sparsity, per_row=False)


def wanda_score(W: torch.Tensor, sq_sum: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ with sq_sum = Σ_tokens x_j² (= diag of H = Σ x xᵀ). (out, in)."""
    return W.abs() * sq_sum.clamp_min(0).sqrt()[None, :]


def wanda_keep(W: torch.Tensor, sq_sum: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Wanda: scores compared within each output row (or within each N:M group)."""
    score = wanda_score(W, sq_sum)
    return nm_keep(score, *nm) if nm else lowest_keep(score, sparsity, per_row=True)


class SparseGPTSelect:
    """SparseGPT's adaptive mask selection, as a `prune` hook of `gptq_quantize`.

    Unstructured: at the start of each block, prune the fraction `sparsity` of the block with the
    smallest w² / [H⁻¹]_jj² (the OBS saliency), compared over the whole block. N:M: at every m-th
    column, prune the n smallest saliencies of each row's next m columns.
    """

    def __init__(self, sparsity: float, nm: tuple[int, int] | None):
        self.sparsity, self.nm = sparsity, nm

    def __call__(self, W1: torch.Tensor, d1: torch.Tensor, i1: int, i: int, M1: torch.Tensor) -> None:
        if self.nm:
            n, m = self.nm
            if i % m == 0:
                sal = W1[:, i : i + m] ** 2 / d1[i : i + m][None, :] ** 2
                M1[:, i : i + m] = ~nm_keep(sal, n, sal.shape[1]) if sal.shape[1] == m else False
            return
        if i == 0:
            sal = W1**2 / d1[None, :] ** 2
            M1[:] = ~lowest_keep(sal, self.sparsity, per_row=False)


class FixedMask:
    """A `prune` hook that enforces a mask chosen earlier (Wanda/magnitude before GPTQ)."""

    def __init__(self, keep: torch.Tensor):
        self.pruned = ~keep

    def __call__(self, W1: torch.Tensor, d1: torch.Tensor, i1: int, i: int, M1: torch.Tensor) -> None:
        if i == 0:
            M1[:] = self.pruned[:, i1 : i1 + M1.shape[1]]


def outlier_ratio(scores: list[torch.Tensor], threshold: float) -> float:
    """OWL's layer outlier ratio: share of the layer's Wanda scores above `threshold` × their mean."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > threshold * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """Layer sparsities from outlier ratios D_l (OWL): densities spread over [1-S-λ, 1-S+λ] linearly
    in D_l, shifted so their mean is 1-S (equal-size layers: the model-wide average is kept)."""
    d = torch.tensor(ratios, dtype=torch.float64)
    spread = d.max() - d.min()
    dens = (d - d.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(d)
    dens = dens - dens.mean() + (1 - sparsity)
    return [float(1 - x) for x in dens]


@dataclass
class PendingSparseGPT:
    """A SparseGPT prune deferred to the following GPTQ step (joint mode)."""

    select: SparseGPTSelect
    pattern: tuple[int, int] | None


def prune_hook_for(work: LayerWork, name: str):
    """The `prune` hook a quantizing sweep (GPTQ) must honour for this module, or None if dense."""
    rec = work.sparse.get(name)
    if rec is None:
        return None
    if isinstance(rec, PendingSparseGPT):
        return rec.select
    return FixedMask(rec.mask)


def finish_pruned_quantization(work: LayerWork, name: str, res) -> None:
    """After GPTQ swept a pruned module: record the final mask and dense values (joint mode)."""
    rec = work.sparse.get(name)
    if rec is None:
        return
    keep = ~res.pruned
    pattern = rec.pattern
    work.sparse[name] = SparseWeight(keep, res.qw.dequantize().masked_fill(res.pruned, 0.0), pattern)
    work.structure.setdefault(name, {}).update(work.sparse[name].describe())
