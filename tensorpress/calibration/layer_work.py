"""The layer under compression as every compressor sees it: one decoder layer (or the lm_head), its calibration
inputs, and the records of what earlier steps did (quantized codes, sparse masks, EoRA corrections, notes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tensorpress.formats.quantized import QuantizedWeight, QuantScheme
from tensorpress.model.architecture import get_weight, set_weight


@dataclass
class LayerWork:
    """One decoder layer (or the lm_head) as a compressor sees it."""

    index: int  # decoder layer index; -1 for modules outside the layers (lm_head)
    prefix: str  # full-name prefix of this layer, e.g. "model.layers.3."
    module: nn.Module
    scale_dtype: torch.dtype  # dtype scales are stored in (the checkpoint's weight dtype)
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)  # full name → record
    # Per-module schemes decided before the layer loop (a GGUF mix, an automatic bit allocation): full
    # name → scheme, overriding the quantizer step's own; see `scheme_for`.
    schemes: dict[str, QuantScheme] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Calibration inputs of this layer (set by the pipeline when a step needs data): one hidden-state
    # batch (B, L, H) and the keyword arguments the layer is called with, per batch.
    calib_inputs: list[torch.Tensor] = field(default_factory=list)
    calib_kwargs: list[dict] = field(default_factory=list)
    # Structural records (see model/structure.py): full name → SparseWeight / EoRA correction, and
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

    def scheme_for(self, full_name: str, default: QuantScheme) -> QuantScheme:
        """The scheme module `full_name` is quantized with: the per-module one if set, else the step's."""
        return self.schemes.get(full_name, default)

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
