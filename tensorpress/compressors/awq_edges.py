"""AWQ's edges and folding: which operation produces each group of consumers' input (a norm feeding q/k/v or
gate/up, v_proj feeding o_proj, up_proj feeding down_proj), folding scales into it, and the check that
folding keeps a layer's function (once per layer structure, with random scales).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tensorpress.calibration.forward import first_sample, run_layer
from tensorpress.calibration.layer_work import LayerWork
from tensorpress.calibration.stats import structure_key
from tensorpress.compressors.awq_search import head_map
from tensorpress.model.architecture import get_weight, in_out, set_weight

# Linear → Linear edges (names relative to the decoder layer), where prev's output channels reach
# next's input channels through an operation that commutes with a positive per-channel scale.
LINEAR_EDGES: list[tuple[str, str]] = [
    ("self_attn.v_proj", "self_attn.o_proj"),  # Llama, Mistral, Qwen2 (attention is linear in V)
    ("self_attn.v_proj", "self_attn.out_proj"),  # OPT
    ("mlp.up_proj", "mlp.down_proj"),  # gated MLP: act(gate) ⊙ up is linear in up
    ("fc1", "fc2"),  # OPT with ReLU (positively homogeneous); checked below
]


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


@dataclass
class Edge:
    """prev → consumers: scaling the consumers' input columns by s is undone by dividing prev's output."""

    kind: Literal["norm", "linear"]
    prev: str  # layer-relative norm name, or the producing Linear's full name
    consumers: list[str]  # full names
    col_map: torch.Tensor | None = None  # consumer column → scale index (grouped-query v→o)


def layer_edges(work: LayerWork, targets: list[str]) -> list[Edge]:
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
        try:
            cmap = linear_col_map(layer, prev_rel, next_rel)
        except ValueError as e:
            work.notes.append(f"awq: {nxt}: {e}; edge skipped")
            continue
        edges.append(Edge("linear", prev, [nxt], cmap))
    order = {n: i for i, n in enumerate(targets)}
    edges.sort(key=lambda e: min(order[c] for c in e.consumers))
    return edges


def linear_col_map(layer: nn.Module, prev_rel: str, next_rel: str) -> torch.Tensor | None:
    """The consumer column → scale map of a Linear→Linear edge (layer-relative names): None when every
    column has its own scale, a grouped-query map for v→o; ValueError when the heads cannot be mapped."""
    pw, nw = get_weight(layer.get_submodule(prev_rel)), get_weight(layer.get_submodule(next_rel))
    attn = layer.get_submodule(prev_rel.rpartition(".")[0]) if "." in prev_rel else layer
    return head_map(pw.shape[0], nw.shape[1], getattr(attn, "head_dim", None))


def fold(work: LayerWork, edge: Edge, s: torch.Tensor) -> torch.Tensor:
    """Apply scales s (k,) to an edge; returns the per-consumer-column scales (in,)."""
    cols = s[edge.col_map] if edge.col_map is not None else s
    if edge.kind == "norm":
        _fold_into_norm(work.module.get_submodule(edge.prev), s)
    elif edge.prev in work.quantized:  # already quantized (fused mode): divide its scales, keep its codes
        qw = work.quantized[edge.prev]
        qw.divide_rows(s)
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


def folds_preserve_function(work: LayerWork, targets: list[str], edges: list[Edge]) -> bool:
    """Fold random scales into every edge of one layer per structure and compare one sequence's output
    (the fused mode cannot compare before/after on the real scales: the quantizer changes the layer)."""
    key = structure_key(work, targets)
    if key not in _FOLDS_OK:
        layer = work.module
        x0, kw0 = first_sample(work.calib_inputs[0], work.calib_kwargs[0])
        state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        gen = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad():
                ref = run_layer(layer, x0, kw0)
                for e in edges:
                    k = int(e.col_map.max()) + 1 if e.col_map is not None else in_out(work.linear(e.consumers[0]))[0]
                    s = (0.5 + 1.5 * torch.rand(k, generator=gen)).to(ref.device)
                    fold(work, e, s)
                out = run_layer(layer, x0, kw0)
        finally:
            layer.load_state_dict(state)
        _FOLDS_OK[key] = float((out - ref).norm() / ref.norm().clamp_min(1e-12)) < 1e-4
    return _FOLDS_OK[key]


def rescale_stats(stats: dict, consumers: list[str], cols: torch.Tensor) -> None:
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
