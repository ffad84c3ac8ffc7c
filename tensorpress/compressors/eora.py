"""EoRA (Liu et al., 2024): a rank-r correction of a quantizer's or pruner's error, found in the
eigenspace of the calibration activations so the rank is spent where the inputs have energy.

H = X Xᵀ = Q Λ Qᵀ; with Q' = Q Λ^½ the output error ‖ΔW X‖ equals ‖ΔW Q'‖ on the calibration data,
so ΔW Q' is truncated by SVD (U_r Σ_r V_rᵀ) and mapped back: B = U_r Σ_r (out, r), A = V_rᵀ Λ^-½ Qᵀ
(r, in). The layer then computes with Ŵ + B A; B and A are stored next to Ŵ (optionally RTN-quantized).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.compressors.base import Compressor, ConfigError
from tensorpress.compressors.quantize import rtn_quantize
from tensorpress.compressors.rtn import validate_scheme
from tensorpress.formats.quantized import QuantScheme
from tensorpress.model.structure import EoRACorrection

COMPRESSORS_BEFORE = ("rtn", "gptq", "prune")


@dataclass
class EoRAConfig:
    rank: int = 32
    bits: int | None = None  # quantize B and A with RTN (None: store them in the checkpoint dtype)
    group_size: int = 64
    eps: float = 1e-6  # eigenvalues below eps·λ_max are clamped (directions the inputs never use)
    true_sequential: bool = False  # True: q/k/v, then o, ..., re-collecting inputs between (slower)

    def validate(self) -> None:
        if self.rank < 1:
            raise ConfigError("rank", f"must be ≥ 1, got {self.rank}")
        if self.bits is not None:
            validate_scheme(self.bits, self.group_size)
        if not 0 < self.eps < 1:
            raise ConfigError("eps", f"must be in (0, 1), got {self.eps}")


def eora_factors(dW: torch.Tensor, H: torch.Tensor, r: int, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """B (out, r), A (r, in) minimizing ‖(ΔW - B A) X‖_F over rank r, for H = X Xᵀ. float64."""
    lam, Q = torch.linalg.eigh(H.double())  # (in,), (in, in)
    lam = lam.clamp_min(eps * float(lam.max().clamp_min(1e-30)))
    root = lam.sqrt()
    U, sigma, Vh = torch.linalg.svd(dW.double() @ (Q * root[None, :]), full_matrices=False)
    r = min(r, len(sigma))
    B = U[:, :r] * sigma[:r][None, :]
    A = (Vh[:r] / root[None, :]) @ Q.t()
    return B, A


class EoRA(Compressor):
    name = "eora"
    Config = EoRAConfig
    needs_calibration = True
    summary = "EoRA: low-rank compensation of the compression error in the activations' eigenspace"

    @staticmethod
    def check_recipe(recipe, step) -> str | None:
        before = [s for s in recipe.steps[: step.index] if s.name in COMPRESSORS_BEFORE]
        if not before:
            return "eora compensates a compressor's error: put a rtn, gptq or prune step before it"
        return None

    def apply(self, work: LayerWork, targets: list[str]) -> None:
        from tensorpress.calibration.stats import compress_by_stage

        compress_by_stage(work, targets, partial(self._stage, work), self.config.true_sequential)

    def _stage(self, work: LayerWork, stage: list[str], hessians: dict) -> None:
        """Add the rank-r correction to each module of one group, in its inputs' eigenspace."""
        cfg: EoRAConfig = self.config
        for name in stage:
            hess = hessians.get(name)
            W_hat = work.weight(name)
            dW = work.originals[name].float() - W_hat
            H = hess.H if hess is not None and hess.n else torch.eye(W_hat.shape[1])
            B, A = eora_factors(dW, H, cfg.rank, cfg.eps)
            corr = self._store(B.float(), A.float(), work.scale_dtype)
            work.set_weight(name, W_hat + corr.b @ corr.a)
            work.eora[name] = corr
            desc = {"rank": int(B.shape[1])}
            if cfg.bits is not None:
                desc.update(bits=cfg.bits, group_size=cfg.group_size, symmetric=True)
            work.structure.setdefault(name, {})["eora"] = desc

    def _store(self, B: torch.Tensor, A: torch.Tensor, dtype: torch.dtype) -> EoRACorrection:
        """The factors as the loader will see them (rounded to the checkpoint dtype, or quantized)."""
        cfg: EoRAConfig = self.config
        if cfg.bits is None:
            return EoRACorrection(B.to(dtype).float(), A.to(dtype).float())
        scheme = QuantScheme(cfg.bits, cfg.group_size, True)
        qa, qb = rtn_quantize(A, scheme, dtype), rtn_quantize(B, scheme, dtype)
        return EoRACorrection(qb.dequantize(), qa.dequantize(), {"a": qa, "b": qb})
