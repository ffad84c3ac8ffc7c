"""GPTQ (Frantar et al., 2022): quantize W column by column, folding each column's rounding error into
the columns not yet quantized through the inverse Hessian of the layer's inputs.

The compressor: its config, statistics per execution stage, modules sharing a Hessian quantized in one
call, SparseGPT masks honoured. The sweep itself is in gptq_sweep.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.compressors.base import Compressor, ConfigError
from tensorpress.compressors.gptq_sweep import GPTQResult, gptq_quantize
from tensorpress.compressors.rtn import validate_scheme
from tensorpress.compressors.sparsity import finish_pruned_quantization, prune_hook_for
from tensorpress.formats.quantized import QuantScheme


@dataclass
class GPTQConfig:
    bits: int = 4
    group_size: int = 64  # -1: per output channel; need not divide in_features
    symmetric: bool = True
    actorder: Literal["off", "static"] | bool = "off"  # static: descending diag(H) order, groups in original order
    block_size: int = 128  # columns per lazy batch update
    dampening: float = 0.01  # fraction of mean diag(H) added to the diagonal
    hessian_blend: float = 0.0  # H ← (1 − β)·H + β·diag(H) before dampening (less cross-channel feedback)
    mse_clip: bool = False  # search a shrunk range per group (minimizing |w - q(w)|^2.4) instead of min/max
    true_sequential: bool = True  # quantize q/k/v, then o, then gate/up, then down, re-collecting H between

    def validate(self) -> None:
        validate_scheme(self.bits, self.group_size)
        if self.block_size < 1:
            raise ConfigError("block_size", f"must be ≥ 1, got {self.block_size}")
        if not 0 < self.dampening < 1:
            raise ConfigError("dampening", f"must be in (0, 1), got {self.dampening}")
        if not 0 <= self.hessian_blend <= 1:
            raise ConfigError("hessian_blend", f"must be in [0, 1], got {self.hessian_blend}")

    def scheme(self) -> QuantScheme:
        return QuantScheme(self.bits, self.group_size, self.symmetric)

    @property
    def act_order(self) -> bool:
        return self.actorder in (True, "static")


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
        # Modules fed the same input (q/k/v, gate/up) share H: quantizing their stacked rows in one
        # call gives exactly the per-module result (rows are independent given H) with one Cholesky
        # and one column loop instead of several.
        shared: dict[tuple, list[str]] = {}
        for name in stage:
            hess = hessians.get(name)
            plain = hess is not None and hess.n > 0 and prune_hook_for(work, name) is None
            scheme = work.scheme_for(name, self.config.scheme())
            shared.setdefault((id(hess) if plain else id(name), scheme), []).append(name)
        for (_, scheme), names in shared.items():
            hess = hessians.get(names[0])
            Ws = [work.weight(n) for n in names]
            if hess is None or hess.n == 0:
                work.notes.append(f"gptq: {names[0]} saw no calibration tokens; quantized with RTN")
                H = torch.eye(Ws[0].shape[1], device=Ws[0].device)
            else:
                H = hess.H
            prune = prune_hook_for(work, names[0]) if len(names) == 1 else None
            res = self._quantize(work, names, scheme, torch.cat(Ws), H, prune)
            row = 0
            for name, W in zip(names, Ws, strict=True):
                rows = slice(row, row + W.shape[0])
                row += W.shape[0]
                qw = res.qw if len(names) == 1 else res.qw.rows(rows)
                work.set_weight(name, qw.dequantize())
                work.quantized[name] = qw
                if prune is not None:
                    finish_pruned_quantization(work, name, res)

    def _quantize(
        self, work: LayerWork, names: list[str], scheme: QuantScheme, W: torch.Tensor, H: torch.Tensor, prune
    ) -> GPTQResult:
        cfg: GPTQConfig = self.config
        try:
            res = gptq_quantize(
                W,
                H,
                scheme,
                work.scale_dtype,
                cfg.block_size,
                cfg.dampening,
                cfg.act_order,
                cfg.mse_clip,
                prune=prune,
                hessian_blend=cfg.hessian_blend,
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
