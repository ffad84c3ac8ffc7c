"""Round-to-nearest quantization: the data-free baseline every other compressor is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from tensorpress.calibration.layer_work import LayerWork
from tensorpress.compressors.base import Compressor, ConfigError
from tensorpress.compressors.ggml_fit import quantize_rtn
from tensorpress.compressors.quantize import rtn_quantize
from tensorpress.formats.ggml_types import ggml_type
from tensorpress.formats.quantized import QuantScheme


@dataclass
class RTNConfig:
    bits: int = 4
    group_size: int = 64  # -1: one group per output channel; need not divide in_features
    symmetric: bool = True

    def validate(self) -> None:
        validate_scheme(self.bits, self.group_size)

    def scheme(self) -> QuantScheme:
        return QuantScheme(self.bits, self.group_size, self.symmetric)


def validate_scheme(bits: int, group_size: int) -> None:
    """Shared by every quantizer's config."""
    if not 2 <= bits <= 8:
        raise ConfigError("bits", f"must be 2–8, got {bits}")
    if group_size == 0 or group_size < -1:
        raise ConfigError("group_size", f"must be a positive number or -1 (per channel), got {group_size}")


class RTN(Compressor):
    name = "rtn"
    Config = RTNConfig
    quantizes = True
    summary = "round-to-nearest integer quantization (data-free), per group or per channel"

    def apply(self, work: LayerWork, targets: list[str]) -> None:
        for name in targets:
            scheme = work.scheme_for(name, self.config.scheme())
            if scheme.ggml is not None:
                qw = quantize_rtn(ggml_type(scheme.ggml), work.weight(name))
            else:
                qw = rtn_quantize(work.weight(name), scheme, work.scale_dtype)
            work.set_weight(name, qw.dequantize().float())
            work.quantized[name] = qw
