"""What every compressor shares: strict config parsing and the per-layer work it receives.

A compressor is a small class around plain math functions. It gets a `LayerWork` — one decoder
layer with its target Linear modules, calibration inputs when it asked for them, and the records of
what earlier steps did — and changes that layer in place: the module computes with the compressed
(dequantized) weight so the next layer sees the real error, and a record says how to pack it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from tensorpress.formats.quantized import QuantizedWeight
from tensorpress.model.architecture import get_weight, set_weight


class ConfigError(ValueError):
    """A config value is wrong; `key` names it (the recipe loader adds the step)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def parse_config(cls: type, raw: dict | None) -> Any:
    """Build config dataclass `cls` from a recipe mapping; unknown keys and wrong types are errors."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(key, f"unknown key '{key}' (known: {', '.join(fields)})")
    for key, value in raw.items():
        if not _type_ok(value, hints[key]):
            raise ConfigError(key, f"must be {_type_name(hints[key])}, got {value!r}")
    cfg = cls(**raw)
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def config_fields(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each field, for `tensorpress list`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append((f.name, _type_name(hints[f.name]), default))
    return out


@dataclass
class LayerWork:
    """One decoder layer (or the lm_head) as a compressor sees it."""

    index: int  # decoder layer index; -1 for modules outside the layers (lm_head)
    prefix: str  # full-name prefix of this layer, e.g. "model.layers.3."
    module: nn.Module
    scale_dtype: torch.dtype  # dtype scales are stored in (the checkpoint's weight dtype)
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)  # full name → record
    notes: list[str] = field(default_factory=list)
    # Calibration inputs of this layer (set by the pipeline when a step needs data): one hidden-state
    # batch (B, L, H) and the keyword arguments the layer is called with, per batch.
    calib_inputs: list[torch.Tensor] = field(default_factory=list)
    calib_kwargs: list[dict] = field(default_factory=list)
    # Structural records (see tensorpress/model/structure.py): full name → SparseWeight / EoRA correction, and
    # full name → JSON description written to config.json["tensorpress"]["structure"] for the loader.
    sparse: dict[str, Any] = field(default_factory=dict)
    eora: dict[str, Any] = field(default_factory=dict)
    structure: dict[str, dict] = field(default_factory=dict)
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # full name → weight before any step
    # The compressed layer's outputs per calibration batch, when a step's replay already computed them
    # (see stats.staged_replay); any later weight change clears them, and the pipeline then reruns the layer.
    outputs: list[torch.Tensor] | None = None
    # Called by stats.staged_replay before it compresses a stage, as f(stage, hessians, inputs) with the
    # stage's input tensor of every batch paused there (a step fused into the next step's pass: AWQ).
    before_stage: list[Callable[[list[str], dict, list[torch.Tensor]], None]] = field(default_factory=list)

    def num_batches(self) -> int:
        return len(self.calib_inputs)

    def replay(self, batches: int | list[int] | None = None) -> None:
        """Run calibration batches through the layer, for the hooks a compressor registered.

        `batches`: all (None), the first k (int) or the listed indices. Outputs are discarded.
        """
        if not self.calib_inputs:
            raise RuntimeError("internal: replay() on a layer without calibration inputs")
        n = len(self.calib_inputs)
        idx = range(n) if batches is None else range(min(batches, n)) if isinstance(batches, int) else batches
        with torch.no_grad():
            for b in idx:
                self.module(self.calib_inputs[b], **self.calib_kwargs[b])

    def linear(self, full_name: str) -> nn.Module:
        return self.module.get_submodule(full_name[len(self.prefix) :]) if self.prefix else self.module

    def weight(self, full_name: str) -> torch.Tensor:
        """(out, in) float32 copy of a target's current weight."""
        return get_weight(self.linear(full_name)).detach().float().clone()

    def set_weight(self, full_name: str, w: torch.Tensor) -> None:
        set_weight(self.linear(full_name), w)
        self.outputs = None


class Compressor:
    """Base of all compressors: a name, a config dataclass, and `apply` on one layer."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_calibration: ClassVar[bool] = False
    quantizes: ClassVar[bool] = False  # produces integer codes for its targets
    lossless: ClassVar[bool] = False  # a whole-output stage on the written shards (selects no modules)
    summary: ClassVar[str] = ""

    def __init__(self, config: Any):
        self.config = config

    def prepare(self, recipe: Any, step: Any) -> None:
        """Called once before the layer loop with the whole recipe (e.g. to find the quantizer that follows)."""

    def apply(self, work: LayerWork, targets: list[str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
