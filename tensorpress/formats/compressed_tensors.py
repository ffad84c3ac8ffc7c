"""Writing and reading quantized Linear weights as compressed-tensors `pack-quantized`.

Per quantized module `M`:  M.weight_packed (int32, out × ceil(in·b/32)), M.weight_scale (out × G,
checkpoint dtype), M.weight_shape (int64 [out, in]) and, when asymmetric, M.weight_zero_point
(int32, ceil(out·b/32) × G, packed along the output dimension). config.json gets one config group per
distinct scheme, each targeting its modules by exact name, so per-layer mixed precision is expressible.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from tensorpress.errors import TensorpressError
from tensorpress.formats.pack_quantized import pack_int32, packed_words, unpack_int32
from tensorpress.formats.quantized import QuantizedWeight, QuantScheme, dequantize

SUFFIXES = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")


def pack_tensors(module_name: str, qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    b = qw.scheme.bits
    out_f, in_f = qw.codes.shape
    tensors = {
        f"{module_name}.weight_packed": pack_int32(qw.codes, b, dim=1),
        f"{module_name}.weight_scale": qw.scale.contiguous(),
        f"{module_name}.weight_shape": torch.tensor([out_f, in_f], dtype=torch.int64),
    }
    if qw.zero is not None:
        tensors[f"{module_name}.weight_zero_point"] = pack_int32(qw.zero, b, dim=0)
    return tensors


def packed_bytes(out_f: int, in_f: int, scheme: QuantScheme, scale_bytes: int) -> int:
    """Bytes `pack_tensors` stores for an (out, in) weight, as `bits_per_weight` counts them: packed codes,
    scales and (asymmetric) packed zero points; not the 16-byte weight_shape."""
    g = scheme.groups(in_f)
    total = out_f * packed_words(in_f, scheme.bits) * 4 + out_f * g * scale_bytes
    if not scheme.symmetric:
        total += packed_words(out_f, scheme.bits) * g * 4
    return total


def scheme_args(s: QuantScheme) -> dict:
    return {
        "num_bits": s.bits,
        "type": "int",
        "symmetric": s.symmetric,
        "group_size": None if s.group_size == -1 else s.group_size,
        "strategy": "channel" if s.group_size == -1 else "group",
        "block_structure": None,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
        "observer_kwargs": {},
    }


def quantization_config(schemes: dict[str, QuantScheme], ignore: list[str]) -> dict:
    """config.json["quantization_config"] for modules quantized with the given schemes."""
    by_scheme: dict[QuantScheme, list[str]] = defaultdict(list)
    for name, s in schemes.items():
        by_scheme[s].append(name)
    groups = {}
    for i, (s, names) in enumerate(sorted(by_scheme.items(), key=lambda kv: (kv[0].bits, kv[0].group_size))):
        groups[f"group_{i}"] = {
            "targets": sorted(names),
            "weights": scheme_args(s),
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
    }


def _scheme_from_args(args: dict, where: str) -> QuantScheme:
    if args.get("type", "int") != "int" or args.get("dynamic"):
        raise TensorpressError(f"{where}: only static integer weight quantization can be decoded")
    strategy = args.get("strategy")
    if strategy not in ("group", "channel"):
        raise TensorpressError(f"{where}: weight strategy '{strategy}' is not supported")
    gs = args.get("group_size") if strategy == "group" else -1
    return QuantScheme(int(args["num_bits"]), int(gs), bool(args.get("symmetric", True)))


def _matches(target: str, name: str, class_name: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target in (name, class_name)


def module_schemes(qconfig: dict, modules: dict[str, str]) -> dict[str, QuantScheme]:
    """Which module (name → class name) is quantized with which scheme, per a quantization_config."""
    if qconfig.get("quant_method") != "compressed-tensors":
        raise TensorpressError(f"quantization_config: quant_method '{qconfig.get('quant_method')}' is not supported")
    fmt = qconfig.get("format")
    ignore = qconfig.get("ignore") or []
    out: dict[str, QuantScheme] = {}
    for gname, group in (qconfig.get("config_groups") or {}).items():
        gfmt = group.get("format") or fmt
        if gfmt != "pack-quantized":
            raise TensorpressError(f"quantization_config: {gname}: format '{gfmt}' is not supported")
        scheme = _scheme_from_args(group.get("weights") or {}, f"quantization_config.{gname}")
        for name, cls in modules.items():
            if any(_matches(t, name, cls) for t in group.get("targets", [])) and not any(
                _matches(i, name, cls) for i in ignore
            ):
                out[name] = scheme
    return out


def decode_weight(name: str, scheme: QuantScheme, read) -> torch.Tensor:
    """Dequantize module `name`'s packed weight; `read(tensor_name)` fetches tensors."""
    shape = read(f"{name}.weight_shape").tolist()
    out_f, in_f = int(shape[0]), int(shape[1])
    codes = unpack_int32(read(f"{name}.weight_packed"), scheme.bits, in_f, dim=1)
    scale = read(f"{name}.weight_scale")
    zero = None
    if not scheme.symmetric:
        zero = unpack_int32(read(f"{name}.weight_zero_point"), scheme.bits, out_f, dim=0)
    if codes.shape != (out_f, in_f) or scale.shape != (out_f, scheme.groups(in_f)):
        raise TensorpressError(f"{name}: packed tensors do not match weight_shape {shape}")
    return dequantize(codes, scale, zero, scheme)
