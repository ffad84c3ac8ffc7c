"""Pruning: magnitude (data-free), Wanda (|W|·‖x‖₂ per output row) and SparseGPT (OBS updates of the
remaining weights through the inverse Hessian, in GPTQ's sweep), unstructured or N:M, with uniform or
OWL (outlier-weighted) layer sparsities.

When a `gptq` step follows a `sparsegpt` prune on the same module, the prune is deferred and GPTQ runs
the joint algorithm once (SparseGPT §3.5: prune and quantize in the same sweep, same Hessian). A
Wanda/magnitude mask is kept by a later GPTQ (its sweep never revives a pruned weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.compressors.base import Compressor, ConfigError
from tensorpress.compressors.sparsity import (
    PendingSparseGPT,
    SparseGPTSelect,
    magnitude_keep,
    parse_pattern,
    wanda_keep,
)
from tensorpress.errors import TensorpressError
from tensorpress.formats.sparse import SparseWeight


@dataclass
class PruneConfig:
    method: Literal["magnitude", "wanda", "sparsegpt"] = "wanda"
    sparsity: float | None = None  # fraction of weights set to zero, 0–1
    pattern: str | None = None  # "N:M": N zeros in every M consecutive inputs (instead of sparsity)
    layerwise: Literal["uniform", "owl"] = "uniform"
    owl_threshold: float = 5.0  # OWL's M: a score is an outlier above M × the layer's mean score
    owl_lambda: float = 0.08  # OWL's λ: layer sparsities span target ± λ
    owl_batches: int = 4  # calibration batches of the dense pre-pass that measures outlier ratios
    block_size: int = 128  # SparseGPT: columns per block (mask selection and lazy updates)
    dampening: float = 0.01  # SparseGPT: fraction of mean diag(H) added to the diagonal
    true_sequential: bool = False  # True: prune q/k/v, then o, gate/up, down, re-collecting inputs (slower)

    def validate(self) -> None:
        if (self.sparsity is None) == (self.pattern is None):
            raise ConfigError("sparsity", "give exactly one of 'sparsity' (0–1) or 'pattern' ('N:M')")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise ConfigError("sparsity", f"must be in [0, 1), got {self.sparsity}")
        if self.pattern is not None:
            try:
                _, m = parse_pattern(self.pattern)
            except ValueError as e:
                raise ConfigError("pattern", str(e)) from e
            if self.block_size % m:
                raise ConfigError("block_size", f"must be a multiple of M={m} of pattern {self.pattern!r}")
        if self.layerwise == "owl":
            if self.sparsity is None:
                raise ConfigError("layerwise", "owl needs 'sparsity' (N:M patterns fix every layer's sparsity)")
            if not 0 < self.owl_lambda <= min(self.sparsity, 1 - self.sparsity):
                raise ConfigError("owl_lambda", f"must be in (0, min(sparsity, 1 - sparsity)], got {self.owl_lambda}")
            if self.owl_batches < 1:
                raise ConfigError("owl_batches", f"must be ≥ 1, got {self.owl_batches}")
        if self.block_size < 1:
            raise ConfigError("block_size", f"must be ≥ 1, got {self.block_size}")
        if not 0 < self.dampening < 1:
            raise ConfigError("dampening", f"must be in (0, 1), got {self.dampening}")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern) if self.pattern else None

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.layerwise == "owl"


class Prune(Compressor):
    name = "prune"
    Config = PruneConfig
    needs_calibration = True  # per config: see PruneConfig.needs_calibration
    summary = "pruning: magnitude | wanda | sparsegpt, unstructured or N:M, uniform or OWL layer sparsity"

    def __init__(self, config: PruneConfig):
        super().__init__(config)
        self.joint: set[str] = set()  # modules whose pruning a later gptq step performs (set at plan time)
        self.layer_sparsity: dict[int, float] = {}  # OWL: decoder layer → sparsity (set by the pre-pass)

    def sparsity_for(self, layer: int) -> float:
        cfg: PruneConfig = self.config
        if cfg.nm:
            n, m = cfg.nm
            return n / m
        return self.layer_sparsity.get(layer, cfg.sparsity)

    def apply(self, work: LayerWork, targets: list[str]) -> None:
        from tensorpress.calibration.stats import compress_by_stage, staged_replay

        cfg: PruneConfig = self.config
        s = self.sparsity_for(work.index)
        nm = cfg.nm
        for name in targets:
            if nm and work.weight(name).shape[1] % nm[1]:
                raise TensorpressError(
                    f"prune: {name}: in_features {work.weight(name).shape[1]} is not a multiple of M={nm[1]}"
                )
        deferred = [n for n in targets if n in self.joint]
        for name in deferred:
            work.sparse[name] = PendingSparseGPT(SparseGPTSelect(s, nm), nm)
        targets = [n for n in targets if n not in self.joint]
        if not targets:
            return
        if cfg.method == "magnitude":
            for name in targets:
                W = work.weight(name)
                self._record(work, name, W * magnitude_keep(W, s, nm), magnitude_keep(W, s, nm), nm)
            return
        if cfg.method == "sparsegpt":
            compress_by_stage(work, targets, partial(self._stage, work, s=s, nm=nm), cfg.true_sequential)
            return
        # Wanda needs only Σ x_j² per input (diag H): far cheaper than the full Hessian SparseGPT needs.
        if cfg.true_sequential:
            staged_replay(work, targets, partial(self._wanda_stage, work, s=s, nm=nm), diagonal=True)
        else:
            self._stage(work, targets, input_sq_sums(work, targets), s, nm)

    def _wanda_stage(self, work: LayerWork, stage: list[str], stats: dict, s: float, nm) -> None:
        self._stage(work, stage, {n: stats[n].sq_sum for n in stage if stats[n].n}, s, nm)

    def _stage(self, work: LayerWork, stage: list[str], stats: dict, s: float, nm) -> None:
        """Prune one group of modules from their statistics (Σx² for Wanda, H for SparseGPT)."""
        cfg: PruneConfig = self.config
        for name in stage:
            W = work.weight(name)
            st = stats.get(name)
            if st is None or (cfg.method != "wanda" and st.n == 0):
                work.notes.append(f"prune: {name} saw no calibration tokens; pruned by magnitude")
                keep = magnitude_keep(W, s, nm)
                self._record(work, name, W * keep, keep, nm)
                continue
            if cfg.method == "wanda":
                keep = wanda_keep(W, st, s, nm)
                self._record(work, name, W * keep, keep, nm)
                continue
            res = sparsegpt_prune(W, st.H, s, nm, cfg.block_size, cfg.dampening, name)
            self._record(work, name, res[0], res[1], nm)

    def _record(self, work: LayerWork, name: str, W: torch.Tensor, keep: torch.Tensor, nm) -> None:
        W = W.to(work.scale_dtype).float().masked_fill(~keep, 0.0)  # the values that will be stored
        work.set_weight(name, W)
        work.sparse[name] = SparseWeight(keep, W, nm)
        work.structure.setdefault(name, {}).update(work.sparse[name].describe())


def input_sq_sums(work: LayerWork, names: list[str]) -> dict[str, torch.Tensor]:
    """Σ over calibration tokens of x_j² for each input j of each module (one replay of every batch)."""
    sums: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_m, inp: tuple) -> None:
            x = inp[0].reshape(-1, inp[0].shape[-1]).float()
            sums[name] = sums[name] + (x * x).sum(0) if name in sums else (x * x).sum(0)

        return hook

    handles = [work.linear(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        work.replay()
    finally:
        for h in handles:
            h.remove()
    return sums


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    block_size: int = 128,
    dampening: float = 0.01,
    where: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT without quantization: (pruned W (out, in), keep mask (out, in))."""
    from tensorpress.compressors.gptq_sweep import gptq_quantize

    try:
        res = gptq_quantize(W, H, None, torch.float32, block_size, dampening, prune=SparseGPTSelect(sparsity, nm))
    except ValueError as e:
        raise TensorpressError(f"prune: {where}: {e}") from e
    return res.dense, ~res.pruned
