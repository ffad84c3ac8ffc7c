"""Turn any tensorpress output (or plain checkpoint) back into dense tensors or a torch model.

Uses tensorpress's own decoders, not compressed-tensors, so outputs load without it installed; the
test suite checks both give the same logits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from tensorpress.errors import TensorpressError
from tensorpress.formats.compressed_tensors import module_schemes
from tensorpress.formats.gguf_read import gguf_output, read_gguf_weights
from tensorpress.formats.quantized import QuantScheme
from tensorpress.formats.sparse import decode_module
from tensorpress.model.architecture import Skeleton, build_skeleton, get_weight, is_linear
from tensorpress.model.checkpoint import Checkpoint, open_checkpoint


def quantized_modules(ckpt: Checkpoint, skel: Skeleton) -> dict[str, QuantScheme]:
    """On-disk module name → scheme for every packed Linear of the checkpoint."""
    qconfig = ckpt.config_dict.get("quantization_config")
    if not qconfig or not skel.packed:
        return {}
    modules = {}
    names = set(ckpt.reader.names())
    for key, disk in skel.packed.items():
        if f"{disk}.weight_packed" not in names:  # sparse without a quantizer: values, not codes
            continue
        mod = skel.model.get_submodule(key[: -len(".weight")])
        modules[disk] = type(mod).__name__
    schemes = module_schemes(qconfig, modules)
    missing = [m for m in modules if m not in schemes]
    if missing:
        raise TensorpressError(f"{ckpt.folder}: {missing[0]} is packed but no quantization_config group targets it")
    return schemes


def dense_tensors(ckpt: Checkpoint, skel: Skeleton) -> Iterator[tuple[str, torch.Tensor]]:
    """(model key, dense tensor in its stored dtype) for every tensor of the checkpoint, streamed."""
    schemes = quantized_modules(ckpt, skel)
    names = set(ckpt.reader.names())
    structure = (ckpt.config_dict.get("tensorpress") or {}).get("structure") or {}
    for key, disk in skel.name_map.items():
        yield key, ckpt.tensor(disk)
    for key, disk in skel.packed.items():
        w = decode_module(disk, schemes.get(disk), ckpt.tensor, names, structure.get(key[: -len(".weight")]))
        mod = skel.model.get_submodule(key[: -len(".weight")])
        if not is_linear(mod):
            raise TensorpressError(f"{disk}: packed weight on a {type(mod).__name__}, not a Linear")
        if get_weight(mod).shape != w.shape:
            raise TensorpressError(f"{disk}: weight_shape {tuple(w.shape)} does not fit {type(mod).__name__}")
        if type(mod).__name__ == "Conv1D":
            w = w.t().contiguous()
        yield key, w


def load(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """Load a checkpoint folder (plain, tensorpress-compressed, or a tensorpress GGUF output) as a dense
    model, ready for eval."""
    gguf_entry = gguf_output(Path(path))
    if gguf_entry is not None:
        config = json.loads((Path(path) / "config.json").read_text())
        model = build_skeleton(config, list(gguf_entry.get("tensors", {}))).model
        state = {k: t.to(device=device, dtype=dtype) for k, t in read_gguf_weights(Path(path), config, gguf_entry)}
        return _finish(model, state, path, device)
    ckpt = open_checkpoint(path)
    try:
        skel = build_skeleton(ckpt.config_dict, ckpt.reader.names())
        model = skel.model
        state = {
            k: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            for k, t in dense_tensors(ckpt, skel)
        }
    finally:
        ckpt.close()
    return _finish(model, state, path, device)


def _finish(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, device: str) -> nn.Module:
    _missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise TensorpressError(f"{path}: unexpected tensor {unexpected[0]}")
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise TensorpressError(f"{path}: no tensor for {still_meta[0]}")
    model.to(device=device)  # buffers (rotary tables) were built for real at init
    model.requires_grad_(False)
    model.eval()
    return model
