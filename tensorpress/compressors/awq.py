"""AWQ (Lin et al., 2024): protect the input channels that carry large activations by scaling them up
before quantization and folding the inverse scale into the operation that produces them.

For an edge  prev_op → {Linear W_l}  (a norm feeding q/k/v or gate/up; v feeding o; up feeding down):

    s = mean|x|^α                      (or, duo form, mean|x|^α / mean|ŵ|^(1-α))
    s ← s / sqrt(max(s) · min(s))
    W_l ← W_l · diag(s),   prev_op's output ← output / s       (the model's function is unchanged)

α ∈ {0, 1/grid, …, 1} minimizes the output error of the quantized consumers. With `objective: linear`
that error is computed exactly from the calibration Hessian H = Σ x xᵀ of each consumer,
    L(s) = Σ_l tr(ΔW_l H ΔW_lᵀ),   ΔW_l = W_l − Q(W_l · diag(s)) · diag(s)⁻¹,
which uses every calibration token for the cost of a few (out × in × in) products; `objective: block`
runs the paper's block (attention for q/k/v, MLP for gate/up) on `search_samples` windows instead.
Q is round-to-nearest with the scheme of the quantizer that follows in the recipe (AWQ itself only
rescales; a recipe without a quantizer after it is rejected).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tensorpress.calibration import stats as calibration_stats
from tensorpress.calibration.forward import run_layer
from tensorpress.calibration.layer_work import LayerWork
from tensorpress.compressors.awq_edges import Edge, fold, layer_edges, rescale_stats
from tensorpress.compressors.awq_fused import fuse
from tensorpress.compressors.awq_search import (
    ScaleSearch,
    alpha_steps,
    awq_scales,
    clip_search,
    fake_quant,
    group_weight_mean,
    head_map,
    search_scales_linear,
)
from tensorpress.compressors.base import Compressor, ConfigError
from tensorpress.compressors.ggml_fit import search_scheme
from tensorpress.formats.quantized import QuantScheme

__all__ = ["AWQ", "AWQConfig", "head_map", "search_scales_linear"]


@dataclass
class AWQConfig:
    grid: int = 20  # α ∈ {0, 1/grid, …, 1}
    max_alpha: float = 1.0  # only α ≤ max_alpha are tried (smaller: milder scales, less tied to calibration)
    hessian_blend: float = 0.0  # linear objective scored with (1 − β)·H + β·diag(H)
    duo_scaling: bool = False  # s = mean|x|^α / mean|ŵ|^(1-α) (weights normalized per group), as in AutoAWQ
    objective: Literal["linear", "block"] = "linear"  # exact consumer-output MSE from H, or the paper's block MSE
    search_samples: int = 16  # calibration windows the block objective runs on
    clip: bool = False  # per-group clipping search of each consumer (not q/k), after scaling
    clip_grid: int = 20
    max_shrink: float = 0.5  # clipping tries max|w| · (1 - max_shrink · i / clip_grid)
    # Search inside the next step's single forward when it is a true-sequential gptq on the same
    # modules (linear objective): no forward of AWQ's own, statistics of the partly quantized layer.
    fused: bool = True

    def validate(self) -> None:
        if self.grid < 1:
            raise ConfigError("grid", f"must be ≥ 1, got {self.grid}")
        if self.clip_grid < 1:
            raise ConfigError("clip_grid", f"must be ≥ 1, got {self.clip_grid}")
        if not 0 <= self.max_alpha <= 1:
            raise ConfigError("max_alpha", f"must be in [0, 1], got {self.max_alpha}")
        if not 0 <= self.hessian_blend <= 1:
            raise ConfigError("hessian_blend", f"must be in [0, 1], got {self.hessian_blend}")
        if self.search_samples < 1:
            raise ConfigError("search_samples", f"must be ≥ 1, got {self.search_samples}")
        if not 0 < self.max_shrink < 1:
            raise ConfigError("max_shrink", f"must be in (0, 1), got {self.max_shrink}")


class AWQ(Compressor):
    name = "awq"
    Config = AWQConfig
    needs_calibration = True
    fuse = False  # set by pipeline.plan.link_steps when the next step can host the search
    summary = "AWQ activation-aware scaling folded into norms and linears; a quantizer must follow"

    @staticmethod
    def check_recipe(recipe, step) -> str | None:
        if not any(s.cls.quantizes for s in recipe.steps[step.index + 1 :]):
            return "awq only rescales weights; it must be followed by a quantizer step (rtn or gptq)"
        return None

    def prepare(self, recipe, step) -> None:
        self._later = [s for s in recipe.steps[step.index + 1 :] if s.cls.quantizes]

    def scheme_for(self, name: str, work: LayerWork) -> QuantScheme | None:
        """The scheme the quantizer that follows will quantize module `name` with (None if none will);
        a GGUF type is searched against as the integer scheme closest to it."""
        for s in getattr(self, "_later", []):
            if s.selects(name):
                return search_scheme(work.scheme_for(name, s.config.scheme()))
        return None

    def apply(self, work: LayerWork, targets: list[str]) -> None:
        cfg: AWQConfig = self.config
        layer = work.module
        edges = layer_edges(work, targets)
        if self.fuse and fuse(self, work, targets, edges):
            return
        stats = calibration_stats.collect_hessians(work, targets, with_abs=True)
        before = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        with torch.no_grad():
            ref = run_layer(work.module, work.calib_inputs[0], work.calib_kwargs[0])

        for edge in edges:
            quantized = self.quantized_consumers(work, edge.consumers)
            if not quantized:
                continue
            h = stats[edge.consumers[0]]
            if cfg.objective == "block" and edge.kind == "norm" and len(edge.consumers) > 1:
                found = self._search_block(work, edge.consumers, quantized, h.mean_abs(), cfg)
            else:
                found = self.search_linear(work, edge, quantized, h)
            if found.alpha == 0:
                continue
            cols = fold(work, edge, found.scales)
            # The consumers' inputs are now x / s: carry their statistics along instead of replaying.
            rescale_stats(stats, edge.consumers, cols)

        with torch.no_grad():
            out = run_layer(work.module, work.calib_inputs[0], work.calib_kwargs[0])
        drift = float((out - ref).norm() / ref.norm().clamp_min(1e-12))
        if drift > 1e-3:
            layer.load_state_dict(before)
            work.notes.append(
                f"awq: layer {work.index}: scaling changed the layer's output by {drift:.2e} "
                f"({type(layer).__name__} has an edge AWQ cannot fold); layer left unscaled"
            )
            return
        if cfg.clip:
            self.clip_modules(work, {c: stats[c].H for c in targets})

    def clip_modules(self, work: LayerWork, hessians: dict[str, torch.Tensor]) -> None:
        """Clip search (after scaling) of each module that will be quantized, except q/k as in AWQ."""
        cfg: AWQConfig = self.config
        for c, H in hessians.items():
            sch = self.scheme_for(c, work)
            if sch is None or c.endswith(("q_proj", "k_proj")):
                continue
            work.set_weight(c, clip_search(work.weight(c), H, sch, work.scale_dtype, cfg.clip_grid, cfg.max_shrink))

    def quantized_consumers(self, work: LayerWork, consumers: list[str]) -> list[tuple[str, QuantScheme]]:
        found = [(c, self.scheme_for(c, work)) for c in consumers]
        return [(c, sch) for c, sch in found if sch is not None]

    def search_linear(self, work: LayerWork, edge: Edge, quantized, h) -> ScaleSearch:
        cfg: AWQConfig = self.config
        Ws = [(work.weight(c), sch) for c, sch in quantized]
        return search_scales_linear(
            Ws,
            h.H,
            h.mean_abs(),
            work.scale_dtype,
            cfg.grid,
            cfg.duo_scaling,
            edge.col_map,
            max_alpha=cfg.max_alpha,
            hessian_blend=cfg.hessian_blend,
        )

    def _search_block(self, work: LayerWork, consumers, quantized, x_mean, cfg: AWQConfig) -> ScaleSearch:
        """The paper's objective: MSE of the parent block's output on `search_samples` windows."""
        parent_rel = _common_parent([c[len(work.prefix) :] for c in consumers])
        block = work.module.get_submodule(parent_rel) if parent_rel else work.module
        calls = _capture_calls(work, block, cfg.search_samples)
        originals = {c: work.weight(c) for c in consumers}
        schemes = dict(quantized)
        with torch.no_grad():
            refs = [_first(block(*a, **kw)) for a, kw in calls]
        wk = None
        if cfg.duo_scaling:
            wk = sum(group_weight_mean(originals[c], s) for c, s in quantized) / len(quantized)
        best = None
        try:
            for i in range(alpha_steps(cfg.grid, cfg.max_alpha)):
                alpha = i / cfg.grid
                s = awq_scales(x_mean, alpha, wk) if i else torch.ones_like(x_mean)
                for c, W in originals.items():
                    sch = schemes.get(c)
                    Wq = fake_quant(W * s, sch, work.scale_dtype) / s if sch is not None else W
                    work.set_weight(c, Wq)
                loss = 0.0
                with torch.no_grad():
                    for (a, kw), r in zip(calls, refs, strict=True):
                        loss += float((_first(block(*a, **kw)) - r).pow(2).sum())
                if best is None or loss < best.loss:
                    best = ScaleSearch(s, alpha, best.loss0 if best else loss, loss)
        finally:
            for c, W in originals.items():
                work.set_weight(c, W)
        assert best is not None
        return best


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _common_parent(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if all(p == level[0] for p in level):
            common.append(level[0])
        else:
            break
    return ".".join(common)


class _Stop(Exception):
    pass


def _capture_calls(work: LayerWork, block: nn.Module, windows: int) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of `block`'s calls on the first batches covering `windows` calibration windows."""
    calls: list[tuple[tuple, dict]] = []

    def hook(_m, args, kwargs):
        calls.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs)))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        seen = 0
        for b in range(work.num_batches()):
            if seen >= windows:
                break
            with contextlib.suppress(_Stop):
                work.replay(batches=[b])
            seen += work.calib_inputs[b].shape[0]
    finally:
        handle.remove()
    return calls
