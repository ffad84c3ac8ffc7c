"""The layer loop: each decoder layer read from the shards, compressed by the recipe's steps, re-run to give the
next layer's inputs, packed, appended to the output shards and released; then the lm_head and the tensors
outside the layers. Compressors see one layer at a time through `LayerWork`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tensorpress.calibration.forward import first_sample, run_layer
from tensorpress.calibration.layer_work import LayerWork
from tensorpress.formats.compressed_tensors import pack_tensors
from tensorpress.formats.ggml_types import GGMLQuantized
from tensorpress.formats.quantized import QuantizedWeight, QuantScheme
from tensorpress.formats.safetensors_io import ShardWriter
from tensorpress.infra.progress import Progress
from tensorpress.model.architecture import Skeleton, get_weight, materialize, release
from tensorpress.model.checkpoint import Checkpoint
from tensorpress.model.structure import write_eora, write_structured
from tensorpress.pipeline.plan import prepare_steps, step_targets
from tensorpress.pipeline.recipe import Recipe
from tensorpress.version import __version__


def compress_layers(
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
    module_schemes: dict[str, QuantScheme] | None = None,
) -> dict:
    """The layer loop. Returns per-module stats: scheme and relative weight error.

    `module_schemes`: per-module schemes overriding the quantizer steps' own (pipeline/schemes.py)."""
    module_schemes = module_schemes or {}
    meta = {"format": "pt", "tensorpress": json.dumps({"version": __version__, "recipe": rec.to_dict()})}
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
            work.schemes = module_schemes
            work.originals = originals
            ref = None
            if inputs:
                x0, kw0 = first_sample(inputs[0], kwargs_list[0])
                with torch.no_grad():  # the uncompressed layer's update on one sequence, for the report
                    ref = run_layer(layer, x0, kw0) - x0
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
                            inputs[b] = run_layer(layer, x, kwargs_list[b]).detach()
                if ref is not None:
                    # Relative error of what the layer adds to the residual stream, same input for both.
                    delta = inputs[0][: x0.shape[0]] - x0 - ref
                    output_error[i] = float(delta.norm() / ref.norm().clamp_min(1e-12))
            _record(work, originals, schemes, errors, notes)
            structure.update(work.structure)
            _pack_module(writer, layer, prefix, skel, dtypes, work)
            release(layer)
        _write_outer(writer, skel, ckpt, rec, plan, compressors, schemes, errors, notes, device, module_schemes)
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
        if not qw.scheme.symmetric and qw.scheme.ggml is None:
            notes.append(
                "asymmetric modules (zero points): compressed-tensors 0.20 packs and unpacks "
                "them as written, but transformers 5.25 cannot load asymmetric pack-quantized weights "
                "(llm-compressor#1618): load with tensorpress.load or `tensorpress decompress`"
            )
        gs = qw.scheme.group_size
        in_f = qw.codes.shape[1]
        if not qw.scheme.whole_groups(in_f):
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
            for name, packed in packed_tensors(owner, work.quantized[owner]).items():
                writer.add(name, packed)
            continue
        if full not in skel.name_map:
            continue
        writer.add(full, t.to(dtypes.get(key, t.dtype)))
    write_eora(writer, work)


def _write_outer(writer, skel, ckpt, rec, plan, compressors, schemes, errors, notes, device, module_schemes) -> None:
    """Everything outside the decoder layers: embeddings, final norm, and the lm_head (maybe quantized)."""
    head = skel.lm_head_name()
    head_steps = [s for s in rec.steps if head in plan[s.index]]
    layer_prefix = skel.layers_name + "."
    if head_steps:
        module = skel.module(head)
        key = f"{head}.weight"
        src = skel.source(key)
        dtypes = {"weight": ckpt.tensor(src).dtype}
        module._parameters["weight"] = nn.Parameter(
            ckpt.tensor(src).to(device=device, dtype=torch.float32), requires_grad=False
        )
        original = get_weight(module).detach().clone()
        work = LayerWork(-1, "", module, _scale_dtype(dtypes))
        work.schemes = module_schemes
        for step in head_steps:
            compressors[step.index].apply(work, [head])
        _record(work, {head: original}, schemes, errors, notes)
        if head in work.quantized:
            for name, packed in packed_tensors(head, work.quantized[head]).items():
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


def packed_tensors(owner: str, qw: QuantizedWeight | GGMLQuantized) -> dict[str, torch.Tensor]:
    """The tensors a quantized module is written as: compressed-tensors' packed codes, or (GGUF output)
    its block bytes `M.weight_ggml` (rows, row_bytes), staged here until pipeline/gguf_export.py."""
    if isinstance(qw, GGMLQuantized):
        return {f"{owner}.weight_ggml": torch.from_numpy(qw.to_bytes())}
    return pack_tensors(owner, qw)
