"""What automatic mixed precision chooses among: candidate schemes per module, their stored bytes, and
the reference widths the `repaired` estimate measures."""

from __future__ import annotations

import dataclasses

from tensorpress.errors import TensorpressError
from tensorpress.formats.compressed_tensors import packed_bytes
from tensorpress.formats.dtypes import DTYPES
from tensorpress.formats.ggml_types import ggml_type
from tensorpress.formats.quantized import QuantScheme
from tensorpress.pipeline.auto.budget import GGUF_CANDIDATES, BudgetConfig
from tensorpress.pipeline.gguf_mix import with_fallback

# `estimator: repaired` measures the recipe's repair (AWQ's scales, then GPTQ's sweep) at these bit widths;
# a candidate takes the ratio of the nearest (on the sample: the repair leaves 2–70 % of rounding's error
# per module, at 4 bits a median 0.87× of what it leaves at 3, so one width would not do for all)
REFERENCE_BITS = (3, 4)


def quantizer_step(rec):
    """The recipe's one quantizer step (auto precision varies its scheme); anything else is an error."""
    quant = [s for s in rec.steps if s.cls.quantizes]
    others = [s.name for s in rec.steps if not s.cls.quantizes and s.name != "awq"]
    where = f"recipe '{rec.source}': budget"
    if len(quant) != 1:
        raise TensorpressError(f"{where}: needs exactly one quantizer step (rtn or gptq), found {len(quant)}")
    if others:
        raise TensorpressError(f"{where}: only awq and one rtn/gptq step can be allocated, not {', '.join(others)}")
    return quant[0]


def candidate_schemes(step, budget: BudgetConfig) -> list[QuantScheme]:
    """The quantizer step's scheme with bits (and group size) varied, cheapest-first per group size; bit
    widths in `asymmetric_bits` come a second time with a zero point per group when the step is symmetric
    (at 2–4 bits a zero point is worth its bytes: the grid spans the group's own [min, max], not ±max|w|)."""
    own = step.config.scheme()
    groups = budget.group_sizes or [own.group_size]
    out = []
    for g in dict.fromkeys(groups):
        for b in sorted(set(budget.bits)):
            out.append(dataclasses.replace(own, bits=b, group_size=g))
            if own.symmetric and b in budget.asymmetric_bits:
                out.append(dataclasses.replace(own, bits=b, group_size=g, symmetric=False))
    return out


def gguf_candidates(budget: BudgetConfig) -> list[QuantScheme]:
    """GGUF output: one candidate per type, cheapest first (as bits per weight on a 256-multiple row)."""
    types = sorted(set(budget.types or GGUF_CANDIDATES), key=lambda t: ggml_type(t).bits_per_weight)
    return [ggml_type(t).scheme() for t in types]


def for_width(c: QuantScheme, in_f: int) -> QuantScheme:
    """A candidate as a module of `in_f` columns stores it: GGUF types take llama-quantize's fallback."""
    return c if c.ggml is None else ggml_type(with_fallback(c.ggml, in_f)).scheme()


def module_candidates(candidates: list[QuantScheme], in_f: int) -> list[QuantScheme]:
    """The candidates a module of `in_f` columns is offered. Group sizes that do not divide its width are
    dropped when another group size does: a short last group stores a whole group's scale for fewer
    weights, and compressed-tensors rejects it. If none divides, all stay (the short last group, as in any
    recipe); per-channel candidates (-1) and GGUF types always stay."""
    grouped = [c for c in candidates if c.ggml is None and c.group_size > 0]
    if any(c.whole_groups(in_f) for c in grouped):
        candidates = [c for c in candidates if c.ggml is not None or c.whole_groups(in_f)]
    return [for_width(c, in_f) for c in candidates]


def label(c: QuantScheme) -> str:
    """How messages name a candidate: a GGUF type, or bits and group size."""
    if c.ggml is not None:
        return c.ggml
    kind = "" if c.symmetric else " asymmetric"
    return f"{c.bits} bits " + ("per channel" if c.group_size == -1 else f"g{c.group_size}") + kind


def stored_bytes(out_f: int, in_f: int, c: QuantScheme, scale_bytes: int) -> int:
    """Bytes of one module under candidate c: GGUF blocks, or compressed-tensors' packed tensors."""
    if c.ggml is not None:
        t = ggml_type(c.ggml)
        return out_f * (in_f // t.block) * t.type_size
    return packed_bytes(out_f, in_f, c, scale_bytes)


def scale_bytes_of(ckpt, skel, name: str) -> int:
    """Bytes per stored scale: scales are kept in the checkpoint's weight dtype (bf16: 2)."""
    info = ckpt.reader.infos.get(skel.name_map.get(name + ".weight", ""))
    return DTYPES[info.dtype].itemsize if info is not None and info.dtype in DTYPES else 4


def reference_schemes(step) -> list[QuantScheme]:
    """The quantizer step's own scheme at each of REFERENCE_BITS (estimator `repaired`)."""
    own = step.config.scheme()
    return [dataclasses.replace(own, bits=b) for b in REFERENCE_BITS]


def nearest_reference(candidates: list[QuantScheme]) -> list[int]:
    """Per candidate, the index in REFERENCE_BITS of the width nearest its bits (the lower on a tie)."""
    return [min(range(len(REFERENCE_BITS)), key=lambda r: (abs(REFERENCE_BITS[r] - c.bits), r)) for c in candidates]


def describe(s: QuantScheme) -> dict:
    """A scheme in reports: bits and group size; a GGUF type by name, its bits being bits per weight."""
    if s.ggml is None:
        return {"bits": s.bits, "group_size": s.group_size, "symmetric": s.symmetric}
    return {"bits": ggml_type(s.ggml).bits_per_weight, "type": s.ggml}
