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
import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

from tensorpress.compressors.base import Compressor, ConfigError, LayerWork
from tensorpress.formats.quantized import QuantScheme, rtn_quantize
from tensorpress.model.architecture import get_weight, in_out, set_weight

# Linear → Linear edges (names relative to the decoder layer), where prev's output channels reach
# next's input channels through an operation that commutes with a positive per-channel scale.
LINEAR_EDGES: list[tuple[str, str]] = [
    ("self_attn.v_proj", "self_attn.o_proj"),  # Llama, Mistral, Qwen2 (attention is linear in V)
    ("self_attn.v_proj", "self_attn.out_proj"),  # OPT
    ("mlp.up_proj", "mlp.down_proj"),  # gated MLP: act(gate) ⊙ up is linear in up
    ("fc1", "fc2"),  # OPT with ReLU (positively homogeneous); checked below
]


@dataclass
class AWQConfig:
    grid: int = 20  # α ∈ {0, 1/grid, …, 1}
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
        if self.search_samples < 1:
            raise ConfigError("search_samples", f"must be ≥ 1, got {self.search_samples}")
        if not 0 < self.max_shrink < 1:
            raise ConfigError("max_shrink", f"must be in (0, 1), got {self.max_shrink}")


# ----------------------------------------------------------------------------------------------- math


def fake_quant(W: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype) -> torch.Tensor:
    """Q(W): round-to-nearest and back, (out, in) → (out, in) float32."""
    return rtn_quantize(W, scheme, scale_dtype).dequantize()


def group_weight_mean(W: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """mean over rows of |w| / max|w| of its group, per input column: (out, in) → (in,)."""
    out_f, in_f = W.shape
    g = scheme.group_len(in_f)
    G = scheme.groups(in_f)
    pad = G * g - in_f
    Wg = torch.nn.functional.pad(W.abs(), (0, pad)).reshape(out_f, G, g)
    Wg = Wg / Wg.amax(dim=2, keepdim=True).clamp_min(1e-12)
    return Wg.reshape(out_f, G * g)[:, :in_f].mean(0)


def awq_scales(x_mean: torch.Tensor, alpha: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """s = x̄^α (or x̄^α / w̄^(1-α)), normalized so that max(s) · min(s) = 1. Shapes (k,) → (k,)."""
    if w_mean is None:
        s = x_mean.clamp_min(1e-4).pow(alpha)
    else:
        s = (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp_min(1e-4)
    return s / torch.sqrt(s.max() * s.min())


def output_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Ŵ) H (W - Ŵ)ᵀ) = Σ over tokens of |(W - Ŵ) x|²."""
    D = W - Wq  # (out, in)
    return float(((D @ H) * D).sum())


def reduce_to(values: torch.Tensor, col_map: torch.Tensor | None, k: int) -> torch.Tensor:
    """Mean of per-column values over the columns sharing a scale: (in,) → (k,)."""
    if col_map is None:
        return values
    out = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, col_map, values)
    count = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, col_map, torch.ones_like(values))
    return out / count.clamp_min(1)


@dataclass
class ScaleSearch:
    scales: torch.Tensor  # (k,) the chosen s (all ones when α = 0 won)
    alpha: float
    loss0: float  # error without scaling
    loss: float  # error with the chosen scaling


def search_scales_linear(
    consumers: list[tuple[torch.Tensor, QuantScheme]],
    H: torch.Tensor,
    x_mean: torch.Tensor,
    scale_dtype: torch.dtype,
    grid: int,
    duo: bool,
    col_map: torch.Tensor | None = None,
) -> ScaleSearch:
    """Grid search of α for consumers (W_l (out_l, in), scheme_l) sharing input statistics H (in, in).

    `col_map` (in,) maps each input column to the scale it shares (grouped-query v→o); None: its own.
    """
    k = int(col_map.max()) + 1 if col_map is not None else x_mean.numel()
    xk = reduce_to(x_mean, col_map, k)
    wk = None
    if duo:
        wk = reduce_to(sum(group_weight_mean(W, sch) for W, sch in consumers) / len(consumers), col_map, k)
    best = None
    for i in range(grid + 1):
        alpha = i / grid
        s = awq_scales(xk, alpha, wk) if i else torch.ones_like(xk)
        cols = s[col_map] if col_map is not None else s  # (in,)
        loss = sum(output_error(W, fake_quant(W * cols, sch, scale_dtype) / cols, H) for W, sch in consumers)
        if best is None or loss < best.loss:
            best = ScaleSearch(s, alpha, best.loss0 if best else loss, loss)
    assert best is not None
    return best


def clip_search(
    W: torch.Tensor, H: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype, grid: int, max_shrink: float
) -> torch.Tensor:
    """Per (row, group) clipping threshold minimizing that group's output error Δ_g H_gg Δ_gᵀ.

    Cross-group terms of H are ignored, as in AWQ's auto_clip. Returns the clipped W (out, in).
    """
    out_f, in_f = W.shape
    g = scheme.group_len(in_f)
    G = scheme.groups(in_f)
    pad = G * g - in_f
    Wp = torch.nn.functional.pad(W, (0, pad))  # (out, G·g)
    Hp = torch.nn.functional.pad(H, (0, pad, 0, pad))
    Hb = torch.stack([Hp[j * g : (j + 1) * g, j * g : (j + 1) * g] for j in range(G)])  # (G, g, g)
    Wg = Wp.reshape(out_f, G, g)
    amax = Wg.abs().amax(dim=2, keepdim=True)  # (out, G, 1)
    per_group = QuantScheme(scheme.bits, g, scheme.symmetric)
    best_err = torch.full((out_f, G), math.inf, device=W.device)
    best_max = amax.clone()
    for i in range(grid + 1):
        m = amax * (1 - max_shrink * i / grid)
        Wc = torch.maximum(torch.minimum(Wg, m), -m)
        D = Wg - fake_quant(Wc.reshape(out_f, G * g), per_group, scale_dtype).reshape(out_f, G, g)
        err = torch.einsum("ogi,gij,ogj->og", D, Hb, D)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better[..., None], m, best_max)
    Wc = torch.maximum(torch.minimum(Wg, best_max), -best_max)
    return Wc.reshape(out_f, G * g)[:, :in_f]


def head_map(v_out: int, o_in: int, head_dim: int | None) -> torch.Tensor | None:
    """o_proj input column j ← v_proj output channel it carries (grouped-query attention repeats kv heads)."""
    if v_out == o_in:
        return None
    if not head_dim or o_in % v_out or v_out % head_dim:
        raise ValueError(f"cannot map {o_in} attention outputs onto {v_out} value channels")
    rep = o_in // v_out
    j = torch.arange(o_in)
    return (j // head_dim // rep) * head_dim + j % head_dim


# ----------------------------------------------------------------------------------------- the module


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    w = getattr(module, "weight", None)
    # Gemma-style norms compute x · (1 + w): dividing w by s would not divide the output; left alone.
    return "Norm" in name and not name.startswith("Gemma") and isinstance(w, torch.Tensor) and w.dim() == 1


def _fold_into_norm(norm: nn.Module, s: torch.Tensor) -> None:
    norm.weight.data.div_(s)
    if getattr(norm, "bias", None) is not None:
        norm.bias.data.div_(s)


def _scale_columns(linear: nn.Module, cols: torch.Tensor) -> None:
    set_weight(linear, get_weight(linear).float() * cols)


def _scale_rows(linear: nn.Module, s: torch.Tensor) -> None:
    set_weight(linear, get_weight(linear).float() / s[:, None])
    if getattr(linear, "bias", None) is not None:
        linear.bias.data.div_(s)


class AWQ(Compressor):
    name = "awq"
    Config = AWQConfig
    needs_calibration = True
    fuse = False  # set by composition.link_steps when the next step can host the search
    summary = "AWQ activation-aware scaling folded into norms and linears; a quantizer must follow"

    @staticmethod
    def check_recipe(recipe, step) -> str | None:
        if not any(s.cls.quantizes for s in recipe.steps[step.index + 1 :]):
            return "awq only rescales weights; it must be followed by a quantizer step (rtn or gptq)"
        return None

    def prepare(self, recipe, step) -> None:
        self._later = [s for s in recipe.steps[step.index + 1 :] if s.cls.quantizes]

    def scheme_for(self, name: str) -> QuantScheme | None:
        """The scheme of the quantizer that will quantize module `name`, or None if none will."""
        for s in getattr(self, "_later", []):
            if s.selects(name):
                return s.config.scheme()
        return None

    def apply(self, work: LayerWork, targets: list[str]) -> None:
        from tensorpress.calibration.stats import collect_hessians

        cfg: AWQConfig = self.config
        layer = work.module
        edges = _layer_edges(work, targets)
        if self.fuse and self._fuse(work, targets, edges):
            return
        stats = collect_hessians(work, targets, with_abs=True)
        before = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        ref = _run(work, 0)

        for edge in edges:
            quantized = self._quantized(edge.consumers)
            if not quantized:
                continue
            h = stats[edge.consumers[0]]
            if cfg.objective == "block" and edge.kind == "norm" and len(edge.consumers) > 1:
                found = self._search_block(work, edge.consumers, quantized, h.mean_abs(), cfg)
            else:
                found = self._search_linear(work, edge, quantized, h)
            if found.alpha == 0:
                continue
            cols = _fold(work, edge, found.scales)
            # The consumers' inputs are now x / s: carry their statistics along instead of replaying.
            _rescale_stats(stats, edge.consumers, cols)

        out = _run(work, 0)
        drift = float((out - ref).norm() / ref.norm().clamp_min(1e-12))
        if drift > 1e-3:
            layer.load_state_dict(before)
            work.notes.append(
                f"awq: layer {work.index}: scaling changed the layer's output by {drift:.2e} "
                f"({type(layer).__name__} has an edge AWQ cannot fold); layer left unscaled"
            )
            return
        if cfg.clip:
            self._clip(work, {c: stats[c].H for c in targets})

    def _clip(self, work: LayerWork, hessians: dict[str, torch.Tensor]) -> None:
        """Clip search (after scaling) of each module that will be quantized, except q/k as in AWQ."""
        cfg: AWQConfig = self.config
        for c, H in hessians.items():
            sch = self.scheme_for(c)
            if sch is None or c.endswith(("q_proj", "k_proj")):
                continue
            work.set_weight(c, clip_search(work.weight(c), H, sch, work.scale_dtype, cfg.clip_grid, cfg.max_shrink))

    def _quantized(self, consumers: list[str]) -> list[tuple[str, QuantScheme]]:
        found = [(c, self.scheme_for(c)) for c in consumers]
        return [(c, sch) for c, sch in found if sch is not None]

    def _search_linear(self, work: LayerWork, edge: Edge, quantized, h) -> ScaleSearch:
        cfg: AWQConfig = self.config
        Ws = [(work.weight(c), sch) for c, sch in quantized]
        return search_scales_linear(Ws, h.H, h.mean_abs(), work.scale_dtype, cfg.grid, cfg.duo_scaling, edge.col_map)

    # -------------------------------------------------------------- fused into the next step's pass

    def _fuse(self, work: LayerWork, targets: list[str], edges: list[Edge]) -> bool:
        """Defer the search of each edge to the moment the next step's single-pass replay reaches the
        edge's consumers (stats.staged_replay calls `_on_stage` there): no forward of AWQ's own.

        The consumers' statistics are then those of the partly compressed layer, the very inputs the
        quantizer will see. Folding into an already quantized producer (v for o, up for down) divides
        its group scales row by row, which keeps its codes. Returns False (AWQ runs on its own) when
        the layer does not fit: an edge spanning stages, earlier structural steps, folds that would
        change this structure's function.
        """
        from tensorpress.calibration.stats import execution_stages

        if work.sparse or work.eora or work.structure or work.quantized:
            return False
        stages = {frozenset(st) for st in execution_stages(work, targets)}
        if any(frozenset(e.consumers) not in stages for e in edges):
            return False
        if not _folds_preserve_function(work, targets, edges):
            return False
        work.before_stage.append(partial(self._on_stage, work, edges))
        return True

    def _on_stage(self, work: LayerWork, edges: list[Edge], stage: list[str], hessians: dict, inputs) -> None:
        cfg: AWQConfig = self.config
        h = hessians[stage[0]]
        for edge in edges:
            if set(edge.consumers) != set(stage) or h.n == 0:
                continue
            quantized = self._quantized(edge.consumers)
            if not quantized:
                continue
            found = self._search_linear(work, edge, quantized, h)
            if found.alpha == 0:
                continue
            cols = _fold(work, edge, found.scales)
            _rescale_stats(hessians, edge.consumers, cols)
            for x in inputs:  # the paused batches computed their input before the fold: x ← x / s
                x.div_(cols.to(x.dtype))
        if cfg.clip and h.n:
            self._clip(work, {c: h.H for c in stage})

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
            for i in range(cfg.grid + 1):
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


@dataclass
class Edge:
    """prev → consumers: scaling the consumers' input columns by s is undone by dividing prev's output."""

    kind: Literal["norm", "linear"]
    prev: str  # layer-relative norm name, or the producing Linear's full name
    consumers: list[str]  # full names
    col_map: torch.Tensor | None = None  # consumer column → scale index (grouped-query v→o)


def _layer_edges(work: LayerWork, targets: list[str]) -> list[Edge]:
    """Every foldable edge of the layer, in the paper's order: q/k/v, v→o, gate/up, up→down."""
    layer = work.module
    rel = {n[len(work.prefix) :] for n in targets}
    edges = [Edge("norm", norm, consumers) for norm, consumers in _norm_consumers(work, targets).items()]
    for prev_rel, next_rel in LINEAR_EDGES:
        if prev_rel not in rel or next_rel not in rel:
            continue
        if next_rel == "fc2" and type(getattr(layer, "activation_fn", None)).__name__ != "ReLU":
            continue
        prev, nxt = work.prefix + prev_rel, work.prefix + next_rel
        pw, nw = get_weight(work.linear(prev)), get_weight(work.linear(nxt))
        attn = layer.get_submodule(prev_rel.rpartition(".")[0]) if "." in prev_rel else layer
        try:
            cmap = head_map(pw.shape[0], nw.shape[1], getattr(attn, "head_dim", None))
        except ValueError as e:
            work.notes.append(f"awq: {nxt}: {e}; edge skipped")
            continue
        edges.append(Edge("linear", prev, [nxt], cmap))
    order = {n: i for i, n in enumerate(targets)}
    edges.sort(key=lambda e: min(order[c] for c in e.consumers))
    return edges


def _fold(work: LayerWork, edge: Edge, s: torch.Tensor) -> torch.Tensor:
    """Apply scales s (k,) to an edge; returns the per-consumer-column scales (in,)."""
    cols = s[edge.col_map] if edge.col_map is not None else s
    if edge.kind == "norm":
        _fold_into_norm(work.module.get_submodule(edge.prev), s)
    elif edge.prev in work.quantized:  # already quantized (fused mode): divide its scales, keep its codes
        qw = work.quantized[edge.prev]
        qw.scale = (qw.scale.float() / s[:, None].to(qw.scale.device)).to(qw.scale.dtype)
        set_weight(work.linear(edge.prev), qw.dequantize())
        bias = getattr(work.linear(edge.prev), "bias", None)
        if bias is not None:
            bias.data.div_(s)
    else:
        _scale_rows(work.linear(edge.prev), s)
    for c in edge.consumers:
        _scale_columns(work.linear(c), cols)
    return cols


_FOLDS_OK: dict[tuple, bool] = {}  # layer structure → folding random scales keeps its function


def _folds_preserve_function(work: LayerWork, targets: list[str], edges: list[Edge]) -> bool:
    """Fold random scales into every edge of one layer per structure and compare one sequence's output
    (the fused mode cannot compare before/after on the real scales: the quantizer changes the layer)."""
    from tensorpress.calibration.stats import structure_key
    from tensorpress.pipeline.run import first_sample

    key = structure_key(work, targets)
    if key not in _FOLDS_OK:
        layer = work.module
        x0, kw0 = first_sample(work.calib_inputs[0], work.calib_kwargs[0])
        state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        gen = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad():
                ref = _first(layer(x0, **kw0))
                for e in edges:
                    k = int(e.col_map.max()) + 1 if e.col_map is not None else in_out(work.linear(e.consumers[0]))[0]
                    s = (0.5 + 1.5 * torch.rand(k, generator=gen)).to(ref.device)
                    _fold(work, e, s)
                out = _first(layer(x0, **kw0))
        finally:
            layer.load_state_dict(state)
        _FOLDS_OK[key] = float((out - ref).norm() / ref.norm().clamp_min(1e-12)) < 1e-4
    return _FOLDS_OK[key]


def _rescale_stats(stats: dict, consumers: list[str], cols: torch.Tensor) -> None:
    """After scaling columns by s, the consumers' inputs are x / s: H ← H / (s sᵀ), mean|x| ← mean|x| / s."""
    seen: set[int] = set()
    for c in consumers:
        h = stats[c]
        if id(h) in seen:
            continue
        seen.add(id(h))
        h.H.div_(cols[:, None] * cols[None, :])
        h.abs_sum.div_(cols)


_NORM_GROUPS: dict[tuple, dict[str, list[str]]] = {}  # layer structure → norm → relative consumer names


def _norm_consumers(work: LayerWork, targets: list[str]) -> dict[str, list[str]]:
    """Norm module (layer-relative name) → target Linears fed directly by its output.

    Found by replaying one batch, once per layer structure."""
    from tensorpress.calibration.stats import structure_key

    key = structure_key(work, targets)
    if key not in _NORM_GROUPS:
        found = _find_norm_consumers(work, targets)
        _NORM_GROUPS[key] = {norm: [c[len(work.prefix) :] for c in cs] for norm, cs in found.items()}
    return {norm: [work.prefix + c for c in cs] for norm, cs in _NORM_GROUPS[key].items()}


def _find_norm_consumers(work: LayerWork, targets: list[str]) -> dict[str, list[str]]:
    layer = work.module
    norm_out: list[tuple[str, torch.Tensor]] = []
    fed: dict[str, str] = {}

    def norm_hook(name: str):
        def hook(_m, _inp, out):
            norm_out.append((name, out))  # holding the tensor keeps its address from being reused

        return hook

    def lin_hook(name: str):
        def hook(_m, inp):
            x = inp[0]
            for norm_name, out in reversed(norm_out):
                if out.data_ptr() == x.data_ptr() and out.shape == x.shape:
                    fed.setdefault(name, norm_name)
                    return

        return hook

    handles = [m.register_forward_hook(norm_hook(n)) for n, m in layer.named_modules() if n and _is_norm(m)]
    handles += [work.linear(t).register_forward_pre_hook(lin_hook(t)) for t in targets]
    try:
        work.replay(batches=1)
    finally:
        for h in handles:
            h.remove()
    groups: dict[str, list[str]] = {}
    for t in targets:
        if t in fed:
            groups.setdefault(fed[t], []).append(t)
    return groups


def _run(work: LayerWork, b: int) -> torch.Tensor:
    with torch.no_grad():
        return _first(work.module(work.calib_inputs[b], **work.calib_kwargs[b]))


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
