"""Per-module quantization schemes, decided once before the layer loop.

By default every module takes its quantizer step's own scheme. A recipe may instead fix the scheme of
each module from the whole model's point of view — a GGUF mix (which llama.cpp type each tensor gets),
or an automatic bit allocation under a size budget — and every quantizer (rtn, gptq, and awq's search
against it) then honours `LayerWork.schemes`.
"""

from __future__ import annotations

from tensorpress.formats.ggml_types import ggml_type
from tensorpress.formats.gguf_names import resolve_gguf_arch
from tensorpress.formats.quantized import QuantScheme
from tensorpress.model.architecture import Skeleton, get_weight
from tensorpress.pipeline.auto.allocate import Allocation
from tensorpress.pipeline.gguf_mix import mix_types
from tensorpress.pipeline.recipe import Recipe


def quantized_names(rec: Recipe, plan: dict[int, list[str]]) -> list[str]:
    """Every module some quantizer step of the recipe targets."""
    return [n for s in rec.steps if s.cls.quantizes for n in plan[s.index]]


def module_schemes(
    skel: Skeleton, rec: Recipe, plan: dict[int, list[str]], allocation: Allocation | None = None
) -> dict[str, QuantScheme]:
    """Full module name → scheme, for the modules whose scheme is not simply their step's own.

    `allocation`: the bits automatic mixed precision chose under the recipe's budget (pipeline/auto/,
    which measures on calibration data first); a GGUF recipe: each module's type in the mix."""
    if rec.gguf is not None:
        resolve_gguf_arch(str(skel.model.config.model_type))  # an unsupported architecture fails here, by name
    if allocation is not None:
        return dict(allocation.schemes)  # with GGUF output: each module's chosen type
    if rec.gguf is None:
        return {}
    widths = {n: get_weight(skel.module(n)).shape[1] for n in quantized_names(rec, plan)}
    types = mix_types(rec.gguf.type, widths, skel.model.config.to_dict(), rec.gguf.embeddings, rec.gguf.pure)
    return {n: ggml_type(t).scheme() for n, t in types.items()}
