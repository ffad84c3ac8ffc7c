"""Low-rank factorization: W (out, in) ≈ U·√Σ (out, r) times √Σ·Vᵀ (r, in), as two Linears.

`plain` truncates the SVD of W itself. `whitened` is SVD-LLM's truncation-aware whitening: with
S the Cholesky factor of the calibration Gram matrix H = X Xᵀ = S Sᵀ, the SVD W S = U Σ Vᵀ truncated to
rank r gives W_r = U_r Σ_r V_rᵀ S⁻¹, and the output error on the calibration data is exactly the
dropped singular values: ‖(W - W_r) X‖_F² = Σ_{i>r} σ_i².
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.compressors.base import Compressor, ConfigError
from tensorpress.errors import TensorpressError
from tensorpress.model.structure import LowRankLinear, replace_module


@dataclass
class SVDConfig:
    rank: int | None = None  # keep r singular values
    ratio: float | None = None  # or: keep this fraction of the layer's parameters, r = ratio·out·in/(out+in)
    energy: float | None = None  # or: smallest r keeping this fraction of Σσ²
    method: Literal["plain", "whitened"] = "whitened"
    shift: float = 1e-6  # whitened: relative diagonal shift of H when Cholesky fails (×10 per retry)
    true_sequential: bool = False  # whitened, True: factor q/k/v, then o, ..., re-collecting inputs between

    def validate(self) -> None:
        given = [k for k in ("rank", "ratio", "energy") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError("rank", "give exactly one of 'rank', 'ratio' or 'energy'")
        if self.rank is not None and self.rank < 1:
            raise ConfigError("rank", f"must be ≥ 1, got {self.rank}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError("ratio", f"must be in (0, 1), got {self.ratio}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError("energy", f"must be in (0, 1], got {self.energy}")
        if not 0 < self.shift < 1:
            raise ConfigError("shift", f"must be in (0, 1), got {self.shift}")

    @property
    def needs_calibration(self) -> bool:
        return self.method == "whitened"


def break_even_rank(out_f: int, in_f: int) -> float:
    """Ranks at or above out·in/(out+in) store at least as many numbers as the dense weight."""
    return out_f * in_f / (out_f + in_f)


def choose_rank(out_f: int, in_f: int, sigma: torch.Tensor, cfg: SVDConfig) -> int:
    if cfg.rank is not None:
        return min(cfg.rank, len(sigma))
    if cfg.ratio is not None:
        return max(1, math.floor(cfg.ratio * break_even_rank(out_f, in_f)))
    e = torch.cumsum(sigma.double() ** 2, 0)
    return int(torch.searchsorted(e / e[-1], torch.tensor(cfg.energy, dtype=e.dtype) - 1e-12)) + 1


def whitening(H: torch.Tensor, shift: float = 1e-6, max_retries: int = 8) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor S of H (float64), H = S Sᵀ; the diagonal is shifted by shift·mean diag(H),
    ×10 per retry, only when H is not positive definite. Returns (S, relative shift used or 0)."""
    H = H.double()
    mean_diag = float(H.diagonal().mean()) or 1.0
    rel = 0.0
    for retry in range(max_retries + 1):
        Hs = H.clone()
        if rel:
            Hs.diagonal().add_(rel * mean_diag)
        S, info = torch.linalg.cholesky_ex(Hs)
        if info == 0:
            return S, rel
        rel = shift if retry == 0 else rel * 10
    raise ValueError(f"calibration Gram matrix is not positive definite even with diagonal shift {rel / 10:g}")


def spectrum(W: torch.Tensor, S: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of W (plain) or of W S (whitened), in float64: U (out, k), σ (k,), Vᵀ (k, in)."""
    A = W.double() if S is None else W.double() @ S
    return torch.linalg.svd(A, full_matrices=False)


def factors(
    U: torch.Tensor, sigma: torch.Tensor, Vh: torch.Tensor, r: int, S: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r √Σ_r (out, r), √Σ_r V_rᵀ S⁻¹ (r, in)) in float64."""
    root = sigma[:r].sqrt()
    up = U[:, :r] * root[None, :]
    down = root[:, None] * Vh[:r]
    if S is not None:
        down = torch.linalg.solve_triangular(S, down, upper=False, left=False)  # X S = down → X = down S⁻¹
    return up, down


class SVD(Compressor):
    name = "svd"
    Config = SVDConfig
    needs_calibration = True  # per config: see SVDConfig.needs_calibration
    summary = "low-rank factors W ≈ U·V (plain SVD or SVD-LLM whitened), two Linears per module"

    def apply(self, work: LayerWork, targets: list[str]) -> None:
        from tensorpress.calibration.stats import compress_by_stage

        cfg: SVDConfig = self.config
        if cfg.method == "plain":
            for name in targets:
                self._factorize(work, name, None)
            return
        compress_by_stage(work, targets, partial(self._stage, work), cfg.true_sequential)

    def _stage(self, work: LayerWork, stage: list[str], hessians: dict) -> None:
        """Factorize each module of one group, whitened by its inputs' Hessian."""
        cfg: SVDConfig = self.config
        for name in stage:
            hess = hessians.get(name)
            if hess is None or hess.n == 0:
                work.notes.append(f"svd: {name} saw no calibration tokens; plain SVD")
                self._factorize(work, name, None)
                continue
            try:
                S, rel = whitening(hess.H, cfg.shift)
            except ValueError as e:
                raise TensorpressError(f"svd: {name}: {e}") from e
            if rel:
                work.notes.append(f"svd: {name}: H not positive definite; diagonal shifted by {rel:g}·mean")
            self._factorize(work, name, S)

    def _factorize(self, work: LayerWork, name: str, S: torch.Tensor | None) -> None:
        cfg: SVDConfig = self.config
        module = work.linear(name)
        W = work.weight(name)
        out_f, in_f = W.shape
        U, sigma, Vh = spectrum(W, S)
        r = choose_rank(out_f, in_f, sigma, cfg)
        if r >= break_even_rank(out_f, in_f):
            even = break_even_rank(out_f, in_f)
            work.notes.append(f"svd: {name} left dense: rank {r} ≥ out·in/(out+in) = {even:.0f} saves no bytes")
            return
        up, down = factors(U, sigma, Vh, r, S)
        dtype = work.scale_dtype
        bias = getattr(module, "bias", None)
        low = LowRankLinear(in_f, out_f, r, bias is not None, device=W.device)
        low.svd_u.weight.data = up.to(dtype).float()  # computed with the values that will be stored
        low.svd_v.weight.data = down.to(dtype).float()
        if bias is not None:
            low.svd_u.bias.data = bias.detach().float().clone()
        low.requires_grad_(False)
        replace_module(work.module, name[len(work.prefix) :], low)
        work.structure.setdefault(name, {})["svd"] = {"rank": r, "method": cfg.method}
