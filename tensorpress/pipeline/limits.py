"""Limits a run is checked against before any work: context length, memory, already-compressed input.

Each check is cheap, runs after the skeleton is built (so the model's real sizes are known) and before
the first window is sampled or layer read, and fails with one line naming the key at fault.
"""

from __future__ import annotations

from tensorpress.errors import TensorpressError
from tensorpress.infra.resources import check_fits
from tensorpress.model.architecture import Skeleton, in_out
from tensorpress.model.checkpoint import Checkpoint
from tensorpress.pipeline.recipe import Recipe


def refuse_compressed(ckpt: Checkpoint, model: object) -> None:
    """Compressing packed codes or coded frames again would quantize garbage: say what to do instead."""
    cfg = ckpt.config_dict
    if "tensorpress" in cfg or "quantization_config" in cfg or ckpt.reader.coded:
        what = "by tensorpress" if "tensorpress" in cfg or ckpt.reader.coded else "(it has a quantization_config)"
        raise TensorpressError(
            f"model '{model}': is already compressed {what}; compress its source, or `tensorpress decompress` it first"
        )


def check_context(skel: Skeleton, seqlen: int, what: str, allow_long_context: bool) -> None:
    """Windows longer than the positions a model was trained on give meaningless numbers: refuse
    unless the user says they know (`--allow-long-context`)."""
    limit = getattr(skel.model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and seqlen > limit and not allow_long_context:
        raise TensorpressError(
            f"{what} {seqlen}: longer than the model's max_position_embeddings ({limit}); "
            "pass --allow-long-context to run anyway"
        )


def check_calibration_memory(skel: Skeleton, recipe: Recipe) -> None:
    """Calibration keeps every window's hidden states (inputs, outputs, paused stage inputs) in fp32:
    estimate them, and the token ids, before sampling a single window."""
    c = recipe.calibration
    hidden = getattr(skel.model.config, "hidden_size", 0) or 0
    need = c.samples * c.seqlen * (8 + 3 * 4 * hidden)
    key = "samples" if c.samples / 128 >= c.seqlen / 512 else "seqlen"
    check_fits(
        need,
        lambda: (
            f"recipe '{recipe.source}': calibration.{key} {getattr(c, key)} "
            f"({c.samples} windows × {c.seqlen} tokens × hidden {hidden})"
        ),
    )


def check_group_memory(skel: Skeleton, recipe: Recipe, plan: dict[int, list[str]]) -> None:
    """A group wider than a module's input is padded to the group size while quantizing: estimate
    those bytes (fp32 weight, padded, plus its extremes) before any layer is read."""
    for step in recipe.steps:
        gs = getattr(step.config, "group_size", None)
        if not isinstance(gs, int) or gs <= 0 or not plan.get(step.index):
            continue
        need = 0
        for name in plan[step.index]:
            in_f, out_f = in_out(skel.module(name))
            need = max(need, 3 * out_f * max(gs, in_f) * 4)
        where = f"recipe '{recipe.source}': steps[{step.index}].{step.name}.group_size {gs}"
        check_fits(need, lambda where=where: where)
