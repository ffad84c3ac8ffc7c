"""`compress`: the sequential layer-wise pipeline from MODEL and recipe to an output folder.

    checkpoint ──stream──▶ decoder layer i (fp32, the only layer in memory)
    calibration windows ──embeddings──▶ inputs of layer 0
    for each layer: apply the recipe's steps → re-run the compressed layer → inputs of layer i+1
                    pack its tensors → append to the output shards → release the layer
    lm_head and the remaining tensors; config.json; evaluate; report; rename into place

The layer loop itself is in layers.py, planning in plan.py. Steps that need no data never pay for
calibration forwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tensorpress.calibration.forward import capture_inputs
from tensorpress.calibration.windows import (
    EVAL_SEQLEN,
    EVAL_WINDOWS,
    calibration_windows,
    eval_windows,
    load_tokenizer,
)
from tensorpress.errors import TensorpressError
from tensorpress.formats.compressed_tensors import quantization_config
from tensorpress.formats.quantized import QuantScheme
from tensorpress.infra.devices import check_device
from tensorpress.infra.outputs import OutputClaim, input_paths
from tensorpress.infra.progress import Progress
from tensorpress.infra.resources import StageMeter, stage
from tensorpress.infra.writable import check_writable
from tensorpress.model.checkpoint import Checkpoint, copy_side_files, open_checkpoint
from tensorpress.model.validate import checked_skeleton
from tensorpress.pipeline.auto.allocate import allocate
from tensorpress.pipeline.auto.budget import BudgetConfig, set_target
from tensorpress.pipeline.auto.problem import allocation_problem
from tensorpress.pipeline.gguf_export import GGUF_FILE, export_gguf
from tensorpress.pipeline.layers import compress_layers
from tensorpress.pipeline.limits import check_calibration_memory, check_context, refuse_compressed
from tensorpress.pipeline.plan import plan_targets
from tensorpress.pipeline.recipe import Recipe, load_recipe
from tensorpress.pipeline.schemes import module_schemes
from tensorpress.version import __version__


@dataclass
class CompressResult:
    out: Path
    recipe: dict
    seconds: dict[str, float]
    peak_rss_bytes: int
    notes: list[str] = field(default_factory=list)
    report: dict | None = None


def compress(
    model: str | Path,
    recipe: str | Path | dict | Recipe,
    out: str | Path,
    *,
    eval_text: str | list[str] | None = None,
    windows: int = EVAL_WINDOWS,
    seqlen: int = EVAL_SEQLEN,
    device: str = "cpu",
    seed: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    eval_base=None,
    allow_long_context: bool = False,
    target_bpw: float | None = None,
    target_size: str | None = None,
) -> CompressResult:
    """Compress checkpoint `model` with `recipe` into folder `out` (atomically); evaluate if asked.

    `eval_text`: one text or several (a report row each; the first one's metrics are the headline).
    `eval_base`: per eval text a precomputed `evaluation.BaseReference` on the same windows (a batch
    computes the base once per model); by default the base model runs alongside the compressed one. `target_bpw` /
    `target_size` set the recipe's budget (automatic mixed precision, pipeline/auto/)."""
    progress = progress or Progress()
    meter = StageMeter()
    out = Path(out)
    check_device(device)
    check_writable(out)
    if seed is not None and not 0 <= seed < 2**64:
        raise TensorpressError(f"--seed {seed}: must be in 0 … 2^64-1")
    named = recipe if isinstance(recipe, (str, Path)) else None
    eval_texts = [eval_text] if isinstance(eval_text, str) else list(eval_text or [])
    with OutputClaim(out, "compress", force, input_paths(model, named, *eval_texts)) as claim:
        with stage(meter, progress, "load"):
            rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
            if seed is not None:
                rec.calibration.seed = seed
            if target_bpw is not None or target_size is not None:
                rec.budget = rec.budget or BudgetConfig()
                set_target(rec.budget, target_bpw, target_size)
            if rec.needs_calibration:
                claim.check_apart(input_paths(*(t for t, _ in rec.calibration.sources)))
            ckpt = open_checkpoint(model)
        try:
            claim.check_apart([ckpt.folder])  # a hub id or a .gguf resolves to a folder only now
            return _compress_into(
                claim, ckpt, rec, eval_texts, windows, seqlen, device, progress, meter, eval_base, allow_long_context
            )
        finally:
            ckpt.close()


def _compress_into(
    claim: OutputClaim,
    ckpt: Checkpoint,
    rec: Recipe,
    eval_texts: list[str],
    windows: int,
    seqlen: int,
    device: str,
    progress: Progress,
    meter: StageMeter,
    eval_base,
    allow_long_context: bool = False,
) -> CompressResult:
    """The work of `compress` once the output is claimed and the inputs are open."""
    with stage(meter, progress, "plan"):
        refuse_compressed(ckpt, ckpt.spec)
        skel = checked_skeleton(ckpt)
        plan = plan_targets(skel, rec)
        problem = allocation_problem(skel, ckpt, rec, plan) if rec.budget is not None else None  # range errors now
        if eval_texts:
            check_context(skel, seqlen, "--seqlen", allow_long_context)
        if rec.needs_calibration:
            what = f"recipe '{rec.source}': calibration.seqlen"
            check_context(skel, rec.calibration.seqlen, what, allow_long_context)
            check_calibration_memory(skel, rec)
        tokenizer = None
        if eval_texts or rec.needs_calibration or problem is not None:
            tokenizer = load_tokenizer(ckpt.folder)
        eval_tokens = {t: eval_windows(t, tokenizer, windows, seqlen) for t in eval_texts}
    torch.manual_seed(rec.calibration.seed)
    notes: list[str] = []
    with claim.build() as tmp:
        inputs: list[torch.Tensor] = []
        kwargs_list: list[dict] = []
        allocation = None
        if problem is not None:
            with meter.stage("allocate"):
                allocation = allocate(problem, skel, ckpt, rec, tokenizer, device, progress)
        schemes = module_schemes(skel, rec, plan, allocation)
        if rec.needs_calibration:
            with stage(meter, progress, "calibrate"):
                c = rec.calibration
                calib = calibration_windows(c.sources, tokenizer, c.samples, c.seqlen, c.seed)
                inputs, kwargs_list = capture_inputs(skel, ckpt, calib, c.batch_size, device)
        with stage(meter, progress, "compress"):
            layer_stats = compress_layers(
                skel, ckpt, rec, plan, tmp, inputs, kwargs_list, device, progress, notes, schemes
            )
        if rec.gguf is not None:
            with stage(meter, progress, "gguf export"):
                layer_stats["gguf_tensors"] = export_gguf(
                    tmp, _plain_config(ckpt), ckpt.folder, rec.gguf, layer_stats["schemes"]
                )
        if allocation is not None:
            layer_stats["auto"] = allocation.info
        if rec.steps[-1].cls.lossless:
            from tensorpress.formats.lossless import code_folder, packed_bits

            with stage(meter, progress, "entropy"):
                code_folder(tmp, rec.steps[-1].config.level, packed_bits(layer_stats["schemes"]))
        meta_notes = sorted(set(notes))
        _write_config(tmp, ckpt, rec, layer_stats, meta_notes)
        copy_side_files(ckpt.folder, tmp)
        result = CompressResult(tmp, rec.to_dict(), meter.seconds, 0, meta_notes)
        if eval_tokens:
            from tensorpress.evaluation.metrics import evaluate_texts
            from tensorpress.evaluation.report import build_report, write_report

            with stage(meter, progress, "evaluate"):
                metrics = evaluate_texts(
                    tmp,
                    ckpt.folder,
                    eval_tokens,
                    device=device,
                    progress=progress,
                    tokenizer=tokenizer,
                    allow_long_context=allow_long_context,
                    bases=eval_base,
                )
            result.report = build_report(tmp, ckpt, rec.to_dict(), metrics, meter, meta_notes, layer_stats)
            write_report(tmp, result.report)
    result.out = claim.out
    result.peak_rss_bytes = meter.overall_peak
    return result


def _plain_config(ckpt: Checkpoint) -> dict:
    cfg = dict(ckpt.config_dict)
    cfg.pop("quantization_config", None)
    cfg.pop("tensorpress", None)
    return cfg


def _write_config(tmp: Path, ckpt: Checkpoint, rec: Recipe, stats: dict, notes: list[str]) -> None:
    cfg = _plain_config(ckpt)
    schemes: dict[str, QuantScheme] = stats["schemes"]
    if schemes and rec.gguf is None:
        ignore = [n for n in stats["relative_error"] if n not in schemes]
        cfg["quantization_config"] = quantization_config(schemes, ignore)
        if stats["head"] in schemes and cfg.get("tie_word_embeddings", True):
            # A quantized head can no longer share the embedding's storage.
            cfg["tie_word_embeddings"] = False
    cfg["tensorpress"] = {
        "version": __version__,
        "recipe": rec.to_dict(),
        "base": str(ckpt.folder.resolve()),
        "notes": notes,
    }
    if rec.gguf is not None:  # what the loader reads back: the file and the HF name → type of every tensor
        cfg["tensorpress"]["gguf"] = {"file": GGUF_FILE, "type": rec.gguf.type, "tensors": stats["gguf_tensors"]}
    if stats.get("auto"):
        cfg["tensorpress"]["auto"] = stats["auto"]  # automatic mixed precision: budget, choice, estimates
    if stats.get("structure"):
        cfg["tensorpress"]["structure"] = stats["structure"]  # what the loader rebuilds: svd, sparse, eora
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
