"""The sequential layer-wise pipeline: the one loop that owns weights, activations and memory.

    checkpoint ──stream──▶ decoder layer i (fp32, the only layer in memory)
    calibration windows ──embeddings──▶ inputs of layer 0
    for each layer: apply the recipe's steps → re-run the compressed layer → inputs of layer i+1
                    pack its tensors → append to the output shards → release the layer
    lm_head and the remaining tensors; config.json; evaluate; report; rename into place

Compressors see one layer at a time through `LayerWork`; steps that need no data never pay for
calibration forwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import tensorpress
from tensorpress.calibration.windows import calibration_windows, eval_windows, load_tokenizer
from tensorpress.compressors.base import LayerWork
from tensorpress.errors import TensorpressError
from tensorpress.formats.compressed_tensors import pack_tensors, quantization_config
from tensorpress.formats.quantized import QuantScheme
from tensorpress.formats.safetensors_io import ShardWriter
from tensorpress.infra.atomic import atomic_dir, check_out_dir
from tensorpress.infra.progress import Progress
from tensorpress.infra.resources import StageMeter
from tensorpress.model.architecture import Skeleton, build_skeleton, get_weight, is_linear, materialize, release
from tensorpress.model.checkpoint import Checkpoint, copy_side_files, open_checkpoint
from tensorpress.model.structure import write_eora, write_structured
from tensorpress.pipeline.plan import check_plan, prepare_steps, step_targets
from tensorpress.pipeline.recipe import Recipe, load_recipe


@dataclass
class CompressResult:
    out: Path
    recipe: dict
    seconds: dict[str, float]
    peak_rss_bytes: int
    notes: list[str] = field(default_factory=list)
    report: dict | None = None


class _Captured(Exception):
    def __init__(self, args: tuple, kwargs: dict):
        self.args_, self.kwargs = args, kwargs


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
        names = [n for n in candidates if step.selects(n)]
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
    return plan


def capture_inputs(
    skel: Skeleton, ckpt: Checkpoint, windows: torch.Tensor, batch_size: int, device: str
) -> tuple[list[torch.Tensor], list[dict]]:
    """Run the embeddings on every calibration batch and keep what reaches decoder layer 0."""
    outer = outer_modules(skel)
    for name, mod in outer:
        materialize(mod, name + ".", skel, ckpt.tensor, torch.float32, device, recurse=False)
    inputs, kwargs_list = [], []

    def stop(_module: nn.Module, args: tuple, kwargs: dict):
        raise _Captured(args, kwargs)

    hook = skel.layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for batch in windows.split(batch_size):
            try:
                with torch.no_grad():
                    skel.model(input_ids=batch.to(device), use_cache=False)
            except _Captured as c:
                kw = dict(c.kwargs)
                x = c.args_[0] if c.args_ else kw.pop("hidden_states")
                for k in ("past_key_values", "past_key_value", "layer_past", "use_cache", "output_attentions"):
                    kw.pop(k, None)
                inputs.append(x.detach())
                kwargs_list.append(kw)
            else:
                raise TensorpressError(f"{skel.arch}: calibration forward never reached decoder layer 0")
    finally:
        hook.remove()
        for _, mod in outer:
            release(mod, recurse=False)
    return inputs, kwargs_list


def outer_modules(skel: Skeleton) -> list[tuple[str, nn.Module]]:
    """Modules outside the decoder layers that own parameters, except the output head."""
    layer_prefix = skel.layers_name + "."
    head = skel.lm_head_name()
    return [
        (name, mod)
        for name, mod in skel.model.named_modules()
        if name
        and not name.startswith(layer_prefix)
        and name != skel.layers_name
        and name != head
        and any(True for _ in mod.parameters(recurse=False))
    ]


def first_sample(x: torch.Tensor, kw: dict) -> tuple[torch.Tensor, dict]:
    """The first sequence of a calibration batch with its keyword arguments (batch-sized tensors sliced)."""
    B = x.shape[0]

    def cut(v):
        if isinstance(v, torch.Tensor) and v.ndim >= 2 and v.shape[0] == B:
            return v[:1]
        if isinstance(v, tuple):
            return tuple(cut(u) for u in v)
        return v

    return x[:1], {k: cut(v) for k, v in kw.items()}


def _run_layer(layer: nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    out = layer(x, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


def compress(
    model: str | Path,
    recipe: str | Path | dict | Recipe,
    out: str | Path,
    *,
    eval_text: str | None = None,
    windows: int = 48,
    seqlen: int = 512,
    device: str = "cpu",
    seed: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    eval_base=None,
) -> CompressResult:
    """Compress checkpoint `model` with `recipe` into folder `out` (atomically); evaluate if asked.

    `eval_base`: a precomputed `evaluation.BaseReference` on the same eval windows (a batch computes the
    base once per model); by default the base model runs alongside the compressed one."""
    progress = progress or Progress()
    meter = StageMeter()
    out = Path(out)
    with meter.stage("load"):
        rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        if seed is not None:
            rec.calibration.seed = seed
        check_out_dir(out, force)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TensorpressError(f"--device {device}: CUDA is not available on this machine")
        ckpt = open_checkpoint(model)
        if out.resolve() == ckpt.folder.resolve():
            raise TensorpressError(f"--out {out}: is the input checkpoint itself")
        skel = build_skeleton(ckpt.config_dict, ckpt.reader.names())
        plan = plan_targets(skel, rec)
        tokenizer = None
        if eval_text or rec.needs_calibration:
            tokenizer = load_tokenizer(ckpt.folder)
        eval_tokens = eval_windows(eval_text, tokenizer, windows, seqlen) if eval_text else None
    torch.manual_seed(rec.calibration.seed)
    notes: list[str] = []
    with atomic_dir(out) as tmp:
        inputs: list[torch.Tensor] = []
        kwargs_list: list[dict] = []
        if rec.needs_calibration:
            with meter.stage("calibrate"):
                c = rec.calibration
                calib = calibration_windows(c.text, tokenizer, c.samples, c.seqlen, c.seed)
                inputs, kwargs_list = capture_inputs(skel, ckpt, calib, c.batch_size, device)
        with meter.stage("compress"):
            layer_stats = _compress_layers(skel, ckpt, rec, plan, tmp, inputs, kwargs_list, device, progress, notes)
        if rec.steps[-1].cls.lossless:
            from tensorpress.formats.lossless import code_folder, packed_bits

            with meter.stage("entropy"):
                code_folder(tmp, rec.steps[-1].config.level, packed_bits(layer_stats["schemes"]))
        meta_notes = sorted(set(notes))
        _write_config(tmp, ckpt, rec, layer_stats, meta_notes)
        copy_side_files(ckpt.folder, tmp)
        result = CompressResult(tmp, rec.to_dict(), meter.seconds, 0, meta_notes)
        if eval_tokens is not None:
            from tensorpress.evaluation.metrics import evaluate_tokens
            from tensorpress.evaluation.report import build_report, write_report

            with meter.stage("evaluate"):
                metrics = evaluate_tokens(
                    tmp, eval_base or ckpt.folder, eval_tokens, device=device, progress=progress, tokenizer=tokenizer
                )
            metrics["text"] = eval_text
            result.report = build_report(tmp, ckpt, rec.to_dict(), metrics, meter, meta_notes, layer_stats)
            write_report(tmp, result.report)
    ckpt.close()
    result.out = out
    result.peak_rss_bytes = meter.overall_peak
    return result


def _compress_layers(
    skel: Skeleton,
    ckpt: Checkpoint,
    rec: Recipe,
    plan: dict[int, list[str]],
    tmp: Path,
    inputs: list[torch.Tensor],
    kwargs_list: list[dict],
    device: str,
    progress: Progress,
    notes: list[str],
) -> dict:
    """The layer loop. Returns per-module stats: scheme and relative weight error."""
    meta = {"format": "pt", "tensorpress": json.dumps({"version": tensorpress.__version__, "recipe": rec.to_dict()})}
    writer = ShardWriter(tmp, metadata=meta)
    compressors = {s.index: s.compressor() for s in rec.steps}
    for s in rec.steps:
        compressors[s.index].prepare(rec, s)
    prepare_steps(rec, plan, compressors, skel, ckpt, inputs, kwargs_list, device)
    structure: dict[str, dict] = {}
    schemes: dict[str, QuantScheme] = {}
    errors: dict[str, float] = {}
    output_error: dict[int, float] = {}
    try:
        for i in progress.track(range(len(skel.layers)), "layers", total=len(skel.layers)):
            layer = skel.layers[i]
            prefix = skel.layer_prefix(i)
            dtypes = materialize(layer, prefix, skel, ckpt.tensor, torch.float32, device)
            originals = {
                n: get_weight(layer.get_submodule(n[len(prefix) :])).detach().clone()
                for names in plan.values()
                for n in names
                if n.startswith(prefix)
            }
            work = LayerWork(i, prefix, layer, _scale_dtype(dtypes), calib_inputs=inputs, calib_kwargs=kwargs_list)
            work.originals = originals
            ref = None
            if inputs:
                x0, kw0 = first_sample(inputs[0], kwargs_list[0])
                with torch.no_grad():  # the uncompressed layer's update on one sequence, for the report
                    ref = _run_layer(layer, x0, kw0) - x0
            for step in rec.steps:
                targets = [n for n in plan[step.index] if n.startswith(prefix)]
                if targets:
                    work.outputs = None  # only the last step's replay can have the final outputs
                    compressors[step.index].apply(work, step_targets(work, step, targets))
            if work.before_stage:
                raise RuntimeError(f"internal: layer {i}: a fused step was left without the pass to run in")
            if inputs:
                if work.outputs is not None and len(work.outputs) == len(inputs):
                    inputs[:] = work.outputs  # the last step's single-pass replay already ran the layer
                else:
                    with torch.no_grad():
                        for b, x in enumerate(inputs):
                            inputs[b] = _run_layer(layer, x, kwargs_list[b]).detach()
                if ref is not None:
                    # Relative error of what the layer adds to the residual stream, same input for both.
                    delta = inputs[0][: x0.shape[0]] - x0 - ref
                    output_error[i] = float(delta.norm() / ref.norm().clamp_min(1e-12))
            _record(work, originals, schemes, errors, notes)
            structure.update(work.structure)
            _pack_module(writer, layer, prefix, skel, dtypes, work)
            release(layer)
        _write_outer(writer, skel, ckpt, rec, plan, compressors, schemes, errors, notes, device)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return {
        "schemes": schemes,
        "relative_error": errors,
        "output_error": output_error,
        "head": skel.lm_head_name(),
        "structure": structure,
    }


def _scale_dtype(dtypes: dict[str, torch.dtype]) -> torch.dtype:
    """Scales are stored in the checkpoint's weight dtype (bf16 for most LLMs)."""
    floats = [d for k, d in dtypes.items() if k.endswith("weight") and d.is_floating_point]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _record(work: LayerWork, originals: dict, schemes: dict, errors: dict, notes: list[str]) -> None:
    for name, w0 in originals.items():
        w1 = work.weight(name)
        denom = float(w0.float().norm()) or 1.0
        errors[name] = float((w1 - w0.float()).norm()) / denom
    for name, qw in work.quantized.items():
        schemes[name] = qw.scheme
        if type(work.linear(name)).__name__ == "Conv1D":
            notes.append(
                "Conv1D layers (GPT-2 style) are not loadable by compressed-tensors/transformers, which would "
                "initialize them randomly: load this output with tensorpress.load or `tensorpress decompress`"
            )
        gs = qw.scheme.group_size
        in_f = qw.codes.shape[1]
        if gs != -1 and in_f % gs:
            notes.append(
                f"group_size {gs} does not divide in_features {in_f} (e.g. {name}): the last group is shorter; "
                "tensorpress and `tensorpress decompress` load it, compressed-tensors 0.20 rejects it"
            )
    notes.extend(work.notes)


def _pack_module(
    writer: ShardWriter, module: nn.Module, prefix: str, skel: Skeleton, dtypes: dict, work: LayerWork
) -> None:
    """Write a layer's tensors: packed for quantized Linears, original dtype for everything else."""
    for key, t in module.state_dict().items():
        full = prefix + key
        owner = full.rpartition(".")[0]
        if write_structured(writer, full, key, t, work):  # sparse weights, low-rank factors
            continue
        if owner in work.quantized and key.endswith("weight"):
            for name, packed in pack_tensors(owner, work.quantized[owner]).items():
                writer.add(name, packed)
            continue
        if full not in skel.name_map:
            continue
        writer.add(full, t.to(dtypes.get(key, t.dtype)))
    write_eora(writer, work)


def _write_outer(writer, skel, ckpt, rec, plan, compressors, schemes, errors, notes, device) -> None:
    """Everything outside the decoder layers: embeddings, final norm, and the lm_head (maybe quantized)."""
    head = skel.lm_head_name()
    head_steps = [s for s in rec.steps if head in plan[s.index]]
    layer_prefix = skel.layers_name + "."
    if head_steps:
        module = skel.module(head)
        key = f"{head}.weight"
        src = skel.name_map.get(key) or _tied_source(skel, key)
        dtypes = {"weight": ckpt.tensor(src).dtype}
        module._parameters["weight"] = nn.Parameter(
            ckpt.tensor(src).to(device=device, dtype=torch.float32), requires_grad=False
        )
        original = get_weight(module).detach().clone()
        work = LayerWork(-1, "", module, _scale_dtype(dtypes))
        for step in head_steps:
            compressors[step.index].apply(work, [head])
        _record(work, {head: original}, schemes, errors, notes)
        if head in work.quantized:
            for name, packed in pack_tensors(head, work.quantized[head]).items():
                writer.add(name, packed)
        else:
            writer.add(key, get_weight(module).to(dtypes["weight"]))
        release(module)
    for key in skel.outer_keys():
        if key.startswith(layer_prefix) or key not in skel.name_map:
            continue
        if head_steps and key == f"{head}.weight":
            continue
        writer.add(key, ckpt.tensor(skel.name_map[key]))


def _tied_source(skel: Skeleton, key: str) -> str:
    """The on-disk tensor a tied key shares (the input embedding for a tied lm_head)."""
    emb = skel.model.get_input_embeddings()
    for name, mod in skel.model.named_modules():
        if mod is emb:
            return skel.name_map[f"{name}.weight"]
    raise TensorpressError(f"cannot find the tensor {key} is tied to")


def _write_config(tmp: Path, ckpt: Checkpoint, rec: Recipe, stats: dict, notes: list[str]) -> None:
    cfg = dict(ckpt.config_dict)
    cfg.pop("quantization_config", None)
    schemes: dict[str, QuantScheme] = stats["schemes"]
    if schemes:
        ignore = [n for n in stats["relative_error"] if n not in schemes]
        cfg["quantization_config"] = quantization_config(schemes, ignore)
        if stats["head"] in schemes and cfg.get("tie_word_embeddings", True):
            # A quantized head can no longer share the embedding's storage.
            cfg["tie_word_embeddings"] = False
    cfg["tensorpress"] = {
        "version": tensorpress.__version__,
        "recipe": rec.to_dict(),
        "base": str(ckpt.folder.resolve()),
        "notes": notes,
    }
    if stats.get("structure"):
        cfg["tensorpress"]["structure"] = stats["structure"]  # what the loader rebuilds: svd, sparse, eora
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
