"""Running pieces of the model on calibration data: the embeddings up to decoder layer 0 (whose inputs are
captured), one decoder layer, the first sequence of a batch."""

from __future__ import annotations

import torch
from torch import nn

from tensorpress.errors import TensorpressError
from tensorpress.model.architecture import Skeleton, materialize, release
from tensorpress.model.checkpoint import Checkpoint


class _Captured(Exception):
    def __init__(self, args: tuple, kwargs: dict):
        self.args_, self.kwargs = args, kwargs


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


def run_layer(layer: nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    """A decoder layer's hidden-state output (layers return a tuple or the tensor, depending on the model)."""
    out = layer(x, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out
