"""Planning: which modules each step compresses, and how structural steps (svd, prune, eora) compose with
quantizers, decided per module before any work.

Allowed per module, in recipe order: [svd | prune] → [rtn | gptq] → [eora]. Everything else is an
error naming the step index, before any work starts. A `sparsegpt` prune followed by `gptq` on the
same module runs as one joint sweep (`link_steps`); OWL's layer sparsities come from a dense
pre-pass over the calibration data (`prepare_steps`).
"""

from __future__ import annotations

import torch

from tensorpress.calibration.forward import run_layer
from tensorpress.compressors.sparsity import outlier_ratio, owl_sparsities, wanda_score
from tensorpress.errors import TensorpressError
from tensorpress.model.architecture import Skeleton, get_weight, is_linear, materialize, release
from tensorpress.model.structure import expand_factors
from tensorpress.pipeline.limits import check_group_memory
from tensorpress.pipeline.recipe import Recipe

STRUCTURAL = ("svd", "prune", "eora")


def plan_targets(skel: Skeleton, recipe: Recipe) -> dict[int, list[str]]:
    """Step index → full names of the Linear modules it compresses; impossible plans are errors."""
    layer_prefix = skel.layers_name + "."
    head = skel.lm_head_name()
    candidates = [
        name
        for name, mod in skel.model.named_modules()
        if is_linear(mod) and (name.startswith(layer_prefix) or name == head)
    ]
    plan: dict[int, list[str]] = {}
    quantized_by: dict[str, int] = {}
    for step in recipe.steps:
        if step.cls.lossless:
            plan[step.index] = []
            continue
        try:
            names = [n for n in candidates if step.selects(n)]
        except TensorpressError as e:  # a regex that ran out of time: say which recipe holds it
            raise TensorpressError(f"recipe '{recipe.source}': {e}") from e
        where = f"recipe '{recipe.source}': steps[{step.index}].{step.name}"
        if not names:
            raise TensorpressError(f"{where}: targets/ignore select no Linear module of {skel.arch}")
        if step.cls.quantizes:
            for n in names:
                if n in quantized_by:
                    raise TensorpressError(
                        f"{where}: {n} is already quantized by steps[{quantized_by[n]}]; one quantizer per module"
                    )
                quantized_by[n] = step.index
        if head in names and step.needs_calibration:
            raise TensorpressError(f"{where}: calibrated compressors cannot target {head} yet; add it to ignore")
        plan[step.index] = names
    check_plan(skel, recipe, plan)  # per-module order of svd / prune / quantizers / eora
    check_group_memory(skel, recipe, plan)
    return plan


def _kind(step) -> str:
    if step.name in STRUCTURAL:
        return step.name
    return "quant" if step.cls.quantizes else step.name


def check_plan(skel, recipe, plan: dict[int, list[str]]) -> None:
    """Reject orders that make no sense on some module, naming the step and the module."""
    head = skel.lm_head_name()
    history: dict[str, list] = {}  # module → steps already applied to it
    for step in recipe.steps:
        where = f"recipe '{recipe.source}': steps[{step.index}].{step.name}"
        kind = _kind(step)
        if kind in STRUCTURAL and head in plan[step.index]:
            raise TensorpressError(f"{where}: {step.name} cannot target {head}; add it to ignore")
        for name in plan[step.index]:
            done = history.setdefault(name, [])
            msg = _order_error(step, kind, done)
            if msg:
                raise TensorpressError(f"{where}: {name}: {msg}")
            done.append(step)


def _order_error(step, kind: str, done: list) -> str | None:
    kinds = {_kind(s): s for s in done}

    def at(k: str) -> str:
        s = kinds[k]
        return f"steps[{s.index}].{s.name}"

    if "eora" in kinds:
        return f"comes after {at('eora')}; eora must be the last step on a module"
    if kind == "svd":
        for k in ("svd", "prune", "quant"):
            if k in kinds:
                return f"svd after {at(k)}: factorize before pruning or quantizing, once"
    if kind == "prune":
        for k, why in (("prune", "pruned twice"), ("svd", "pruning low-rank factors is not supported")):
            if k in kinds:
                return f"{why} ({at(k)})"
        if "quant" in kinds:
            return f"prune after {at('quant')}: prune before quantizing"
    if kind == "quant" and "prune" in kinds:
        prune = kinds["prune"]
        if getattr(step.config, "act_order", False):
            return f"actorder reorders columns, which a pruned module ({at('prune')}) cannot; set actorder: off"
        nm = prune.config.nm
        block = getattr(step.config, "block_size", None)
        if nm and block is not None and block % nm[1]:
            return f"block_size {block} must be a multiple of M={nm[1]} of {at('prune')}"
    if kind == "eora":
        if "svd" in kinds:
            return f"eora on the low-rank factors of {at('svd')} is not supported"
        if "prune" not in kinds and "quant" not in kinds:
            return "no compressor before it on this module: nothing to compensate"
    return None


def link_steps(recipe, plan: dict[int, list[str]], compressors: dict) -> None:
    """Joint SparseGPT + GPTQ: a sparsegpt prune defers to the gptq step that follows on the module.
    AWQ runs its search inside the pass of a true-sequential gptq right after it on the same modules."""
    for step in recipe.steps:
        if step.name == "awq" and step.index + 1 < len(recipe.steps):
            nxt = recipe.steps[step.index + 1]
            compressors[step.index].fuse = (
                step.config.fused
                and step.config.objective == "linear"
                and nxt.name == "gptq"
                and nxt.config.true_sequential
                and plan[nxt.index] == plan[step.index]
            )
        if step.name != "prune" or step.config.method != "sparsegpt":
            continue
        later = [s for s in recipe.steps[step.index + 1 :] if s.name == "gptq"]
        joint = {n for s in later for n in plan[s.index] if n in plan[step.index]}
        compressors[step.index].joint = joint


def prepare_steps(recipe, plan, compressors, skel, ckpt, inputs, kwargs_list, device) -> None:
    """Once, before the layer loop: joint links and OWL's outlier ratios."""
    link_steps(recipe, plan, compressors)
    for step in recipe.steps:
        if step.name == "prune" and step.config.layerwise == "owl":
            cfg = step.config
            ratios = owl_outlier_ratios(
                skel, ckpt, inputs[: cfg.owl_batches], kwargs_list, plan[step.index], cfg.owl_threshold, device
            )
            layers = sorted(ratios)
            sp = owl_sparsities([ratios[i] for i in layers], cfg.sparsity, cfg.owl_lambda)
            compressors[step.index].layer_sparsity = dict(zip(layers, sp, strict=True))


def owl_outlier_ratios(skel, ckpt, inputs, kwargs_list, names, threshold: float, device) -> dict[int, float]:
    """Per decoder layer: OWL's outlier ratio of the Wanda scores |W|·‖x‖ of the targeted modules, from
    a forward pass of the *dense* model over the given calibration batches (one layer in memory at a time)."""

    xs = [x.clone() for x in inputs]
    ratios: dict[int, float] = {}
    for i, layer in enumerate(skel.layers):
        prefix = skel.layer_prefix(i)
        mine = [n for n in names if n.startswith(prefix)]
        materialize(layer, prefix, skel, ckpt.tensor, torch.float32, device)
        sq: dict[str, torch.Tensor] = {}

        def hook_for(n: str, sq: dict = sq):
            def hook(_m, inp):
                x = inp[0].reshape(-1, inp[0].shape[-1]).float()
                sq[n] = sq.get(n, 0) + (x * x).sum(0)

            return hook

        handles = [layer.get_submodule(n[len(prefix) :]).register_forward_pre_hook(hook_for(n)) for n in mine]
        try:
            with torch.no_grad():
                xs = [run_layer(layer, x, kwargs_list[b]) for b, x in enumerate(xs)]
        finally:
            for h in handles:
                h.remove()
        if mine:
            scores = [wanda_score(get_weight(layer.get_submodule(n[len(prefix) :])).float(), sq[n]) for n in mine]
            ratios[i] = outlier_ratio(scores, threshold)
        release(layer)
    return ratios


def step_targets(work, step, targets: list[str]) -> list[str]:
    """What a step compresses in this layer: a quantizer after svd quantizes both factors."""
    return expand_factors(work, targets) if step.cls.quantizes else targets
