"""Per-module quantization schemes, decided once before the layer loop.

By default every module takes its quantizer step's own scheme. A recipe may instead fix the scheme of
each module from the whole model's point of view — a GGUF mix (which llama.cpp type each tensor gets),
or an automatic bit allocation under a size budget — and every quantizer (rtn, gptq, and awq's search
against it) then honours `LayerWork.schemes`.
"""

from __future__ import annotations

from tensorpress.formats.quantized import QuantScheme
from tensorpress.model.architecture import Skeleton
from tensorpress.pipeline.auto import Allocation
from tensorpress.pipeline.recipe import Recipe


def module_schemes(
    skel: Skeleton, rec: Recipe, plan: dict[int, list[str]], allocation: Allocation | None = None
) -> dict[str, QuantScheme]:
    """Full module name → scheme, for the modules whose scheme is not simply their step's own.

    `allocation`: the bits automatic mixed precision chose under the recipe's budget (pipeline/auto.py,
    which measures on calibration data first)."""
    return dict(allocation.schemes) if allocation is not None else {}
