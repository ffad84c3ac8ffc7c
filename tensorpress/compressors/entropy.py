"""Lossless entropy coding as a recipe step: `- entropy: {level: fast|max}`, always the last step.

It is a whole-output stage, not a per-layer compressor: it selects no Linear modules, and after the
shards are written the pipeline hands them to `tensorpress.formats.lossless.code_folder`, which codes every
tensor the earlier steps left (original floats, or integer codes + scales of a quantized model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.compressors.base import Compressor


@dataclass
class EntropyConfig:
    # fast: high byte (sign + 7 exponent bits) Huffman-coded, low byte raw (≈67.2% of BF16, quickest decode);
    # max: exponent + top mantissa bit jointly, then sign + 6 mantissa bits (≈66.2% of BF16)
    level: Literal["fast", "max"] = "max"


class Entropy(Compressor):
    name = "entropy"
    Config = EntropyConfig
    lossless = True
    summary = "lossless entropy coding of every stored tensor (float exponents, integer codes); last step only"

    def apply(self, work: LayerWork, targets: list[str]) -> None:  # pragma: no cover - never per layer
        raise RuntimeError("internal: the entropy step runs on the written shards, not per layer")

    @staticmethod
    def check_recipe(recipe, step) -> str | None:
        if step.index != len(recipe.steps) - 1:
            later = ", ".join(s.name for s in recipe.steps[step.index + 1 :])
            return f"must be the last step (it codes what the others wrote), but {later} follows it"
        if step.targets or step.ignore:
            return "takes no targets/ignore: it codes every tensor of the output"
        return None
