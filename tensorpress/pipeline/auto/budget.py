"""The `budget:` section of a recipe: what automatic mixed precision must fit in, and how it measures.

```yaml
budget:
  bits_per_weight: 3.5       # or size: 90MB — exactly one target (CLI: --target-bpw / --target-size)
  bits: [2, 3, 4, 5, 6, 8]   # candidate bit widths of the quantizer step
  group_sizes: [32, 64, 96, 192, -1]   # candidate group sizes, -1 per channel (empty: the quantizer step's
                                       # own); a module is offered those dividing its width, when any does
  asymmetric_bits: [2, 3, 4]  # bit widths also offered asymmetric: a zero point per group (empty: none)
  types: [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0]   # with GGUF output: candidate GGUF types (this default)
```
Every other setting of a candidate is the quantizer step's own. Bits per weight count what the quantized
Linears store (codes, scales, zero points) over their dense out × in weights, as `bits_per_weight` in
reports; a size is the total bytes of the output's weight files (`size_bytes` in reports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from tensorpress.compressors.base import ConfigError
from tensorpress.errors import TensorpressError
from tensorpress.formats.ggml_types import TYPES

# GGUF output's default candidates: llama.cpp's K-quants from 2 to 6 bits and Q8_0 (rows not a multiple of
# 256 wide take each K-type's llama-quantize fallback)
GGUF_CANDIDATES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_size(value: str | int | float) -> int:
    """Bytes from 123456, "90MB" (10^6), "90MiB" (2^20), "3GB", "3GiB"; anything else is a ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"not a size: {value!r} (e.g. 90MB, 3GiB or a number of bytes)")
        n = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if n <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return int(n)


@dataclass
class BudgetConfig:
    bits_per_weight: float | None = None  # target bits per quantized weight
    size: str | int | None = None  # target size of the weight files: bytes, or "90MB", "3GiB"
    bits: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 8])  # candidate bit widths
    group_sizes: list[int] = field(default_factory=list)  # candidate group sizes; empty: the quantizer's own
    asymmetric_bits: list[int] = field(default_factory=list)  # bit widths also offered with zero points
    samples: int = 32  # calibration windows of the Hessians (estimators gptq/repaired, awq_scaled, GGUF output)
    fisher_samples: int = 8  # windows of the sensitivity pass (one forward + backward), whole batches
    # candidate error: rounding; or × what GPTQ's sweep leaves of it, per candidate ("gptq"), or × what the
    # recipe's own repair (AWQ's scales, then GPTQ) leaves of it at reference bit widths ("repaired")
    estimator: Literal["rtn", "gptq", "repaired"] = "rtn"
    types: list[str] = field(default_factory=list)  # GGUF output: candidate types (empty: GGUF_CANDIDATES)
    awq_scaled: bool = False  # with an awq step: score each candidate after AWQ's scales (pipeline/auto/awq_columns.py)

    def validate(self) -> None:
        if self.bits_per_weight is not None and self.size is not None:
            raise ConfigError("size", "give bits_per_weight or size, not both")
        if self.bits_per_weight is not None and self.bits_per_weight <= 0:
            raise ConfigError("bits_per_weight", f"must be positive, got {self.bits_per_weight}")
        if self.size is not None:
            try:
                parse_size(self.size)
            except ValueError as e:
                raise ConfigError("size", str(e)) from e
        if not self.bits or any(not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8 for b in self.bits):
            raise ConfigError("bits", f"must be a non-empty list of integers 2–8, got {self.bits}")
        extra = [b for b in self.asymmetric_bits if b not in self.bits]
        if extra:
            raise ConfigError("asymmetric_bits", f"{extra[0]!r} is not one of the candidate bits {self.bits}")
        if any(not isinstance(g, int) or isinstance(g, bool) or (g < 1 and g != -1) for g in self.group_sizes):
            raise ConfigError("group_sizes", f"must be positive integers or -1, got {self.group_sizes}")
        self.types = [str(t).upper() for t in self.types]
        unknown = [t for t in self.types if t not in TYPES]
        if unknown:
            raise ConfigError("types", f"unknown GGUF type {unknown[0]!r} (known: {', '.join(TYPES)})")
        if not isinstance(self.awq_scaled, bool):
            raise ConfigError("awq_scaled", f"must be true or false, got {self.awq_scaled!r}")
        if self.estimator == "repaired" and self.awq_scaled:
            raise ConfigError("awq_scaled", "estimator repaired already measures AWQ's scales; drop awq_scaled")
        for key in ("samples", "fisher_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be ≥ 1, got {getattr(self, key)}")

    @property
    def has_target(self) -> bool:
        return self.bits_per_weight is not None or self.size is not None

    def target_text(self) -> str:
        """The target as the user wrote it, for messages: `--target-bpw 3.5` style."""
        if self.bits_per_weight is not None:
            return f"bits_per_weight {self.bits_per_weight:g}"
        return f"size {self.size}"


def set_target(budget: BudgetConfig, bits_per_weight: float | None, size: str | None) -> None:
    """Apply the CLI's --target-bpw / --target-size (one at most) over the recipe's target."""
    if bits_per_weight is not None and size is not None:
        raise TensorpressError("--target-bpw and --target-size: give one, not both")
    if bits_per_weight is not None:
        if bits_per_weight <= 0:
            raise TensorpressError(f"--target-bpw {bits_per_weight:g}: must be positive")
        budget.bits_per_weight, budget.size = bits_per_weight, None
    if size is not None:
        try:
            parse_size(size)
        except ValueError as e:
            raise TensorpressError(f"--target-size {size}: {e}") from e
        budget.bits_per_weight, budget.size = None, size
