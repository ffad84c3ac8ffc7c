"""AWQ fused into the next gptq's single pass: the search of each edge runs when the pass reaches the edge's
consumers, on that stage's statistics, and the paused inputs and the Hessian are rescaled in place before
gptq quantizes the stage. `awq` is the AWQ compressor (its scheme lookup, linear search and clip search).
"""

from __future__ import annotations

from functools import partial

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.calibration.stats import execution_stages
from tensorpress.compressors.awq_edges import Edge, fold, folds_preserve_function, rescale_stats


def fuse(awq, work: LayerWork, targets: list[str], edges: list[Edge]) -> bool:
    """Defer the search of each edge to the moment the next step's single-pass replay reaches the
    edge's consumers (stats.staged_replay calls `on_stage` there): no forward of AWQ's own.

    The consumers' statistics are then those of the partly compressed layer, the very inputs the
    quantizer will see. Folding into an already quantized producer (v for o, up for down) divides
    its group scales row by row, which keeps its codes. Returns False (AWQ runs on its own) when
    the layer does not fit: an edge spanning stages, earlier structural steps, folds that would
    change this structure's function.
    """
    if work.sparse or work.eora or work.structure or work.quantized:
        return False
    stages = {frozenset(st) for st in execution_stages(work, targets)}
    if any(frozenset(e.consumers) not in stages for e in edges):
        return False
    if not folds_preserve_function(work, targets, edges):
        return False
    work.before_stage.append(partial(on_stage, awq, work, edges))
    return True


def on_stage(awq, work: LayerWork, edges: list[Edge], stage: list[str], hessians: dict, inputs) -> None:
    """Called by the pass before it compresses `stage`: search, fold and rescale every edge feeding it."""
    cfg = awq.config
    h = hessians[stage[0]]
    for edge in edges:
        if set(edge.consumers) != set(stage) or h.n == 0:
            continue
        quantized = awq.quantized_consumers(work, edge.consumers)
        if not quantized:
            continue
        found = awq.search_linear(work, edge, quantized, h)
        if found.alpha == 0:
            continue
        cols = fold(work, edge, found.scales)
        rescale_stats(hessians, edge.consumers, cols)
        for x in inputs:  # the paused batches computed their input before the fold: x ← x / s
            x.div_(cols.to(x.dtype))
    if cfg.clip and h.n:
        awq.clip_modules(work, {c: h.H for c in stage})
