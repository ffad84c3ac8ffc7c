"""Writing and reading quantized Linear weights as compressed-tensors `pack-quantized`.

Per quantized module `M`:  M.weight_packed (int32, out × ceil(in·b/32)), M.weight_scale (out × G,
checkpoint dtype), M.weight_shape (int64 [out, in]) and, when asymmetric, M.weight_zero_point
(int32, ceil(out·b/32) × G, packed along the output dimension). config.json gets one config group per
distinct scheme, each targeting its modules by exact name, so per-layer mixed precision is expressible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from tensorpress.errors import TensorpressError
from tensorpress.formats.pack_quantized import pack_int32, packed_words, unpack_int32
from tensorpress.formats.quantized import QuantizedWeight, QuantScheme, dequantize
from tensorpress.infra.patterns import prefix_match


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


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _scheme_from_args(args: object, where: str) -> QuantScheme:
    """A config group's `weights` → QuantScheme; every field's type and range checked, naming it."""
    if not isinstance(args, dict):
        raise TensorpressError(f"{where}: weights must be a mapping, got {type(args).__name__}")
    if args.get("type", "int") != "int" or args.get("dynamic"):
        raise TensorpressError(f"{where}: only static integer weight quantization can be decoded")
    strategy = args.get("strategy")
    if strategy not in ("group", "channel"):
        raise TensorpressError(f"{where}: weight strategy '{strategy}' is not supported")
    bits = args.get("num_bits")
    if not _int(bits) or not 2 <= bits <= 8:
        raise TensorpressError(f"{where}.weights.num_bits: must be an integer in 2…8, got {bits!r}")
    gs = args.get("group_size") if strategy == "group" else -1
    if strategy == "group" and (not _int(gs) or gs < 1):
        raise TensorpressError(f"{where}.weights.group_size: must be a positive integer, got {gs!r}")
    sym = args.get("symmetric", True)
    if not isinstance(sym, bool):
        raise TensorpressError(f"{where}.weights.symmetric: must be true or false, got {sym!r}")
    return QuantScheme(bits, gs, sym)


def _matches(target: str, name: str, class_name: str, where: str) -> bool:
    if target.startswith("re:"):
        return prefix_match(target[3:], name, where)
    return target in (name, class_name)


def _str_list(v: object, where: str) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TensorpressError(f"{where}: must be a list of strings, got {v!r}")
    return v


def module_schemes(qconfig: dict, modules: dict[str, str]) -> dict[str, QuantScheme]:
    """Which module (name → class name) is quantized with which scheme, per a quantization_config."""
    if not isinstance(qconfig, dict):
        raise TensorpressError("quantization_config: must be a mapping")
    if qconfig.get("quant_method") != "compressed-tensors":
        raise TensorpressError(f"quantization_config: quant_method '{qconfig.get('quant_method')}' is not supported")
    fmt = qconfig.get("format")
    ignore = _str_list(qconfig.get("ignore"), "quantization_config.ignore")
    groups = qconfig.get("config_groups") or {}
    if not isinstance(groups, dict):
        raise TensorpressError(f"quantization_config.config_groups: must be a mapping, got {type(groups).__name__}")
    out: dict[str, QuantScheme] = {}
    for gname, group in groups.items():
        where = f"quantization_config.config_groups.{gname}"
        if not isinstance(group, dict):
            raise TensorpressError(f"{where}: must be a mapping")
        gfmt = group.get("format") or fmt
        if gfmt != "pack-quantized":
            raise TensorpressError(f"{where}: format '{gfmt}' is not supported")
        if "weights" not in group:
            raise TensorpressError(f"{where}: has no weights scheme")
        scheme = _scheme_from_args(group["weights"], where)
        targets = _str_list(group.get("targets"), f"{where}.targets")
        for name, cls in modules.items():
            if any(_matches(t, name, cls, f"{where}.targets") for t in targets) and not any(
                _matches(i, name, cls, "quantization_config.ignore") for i in ignore
            ):
                out[name] = scheme
    return out


def describe(s: QuantScheme) -> str:
    kind = "sym" if s.symmetric else "asym"
    return f"int{s.bits} {kind} " + ("per-channel" if s.group_size == -1 else f"g{s.group_size}")


Kind = Callable[[str], "tuple[str, tuple[int, ...]] | None"]  # tensor name → (dtype, shape) or None
FLOATS = ("F32", "F16", "BF16", "F64")


def weight_shape(name: str, kind: Kind, read) -> tuple[int, int]:
    """A packed module's `weight_shape` ([out, in]), checked as a header entry before it is read."""
    k = kind(f"{name}.weight_shape")
    if k is None:
        raise TensorpressError(f"{name}.weight_shape: missing (every packed module stores one)")
    if k[0] not in ("I64", "I32") or k[1] != (2,):
        raise TensorpressError(f"{name}.weight_shape: must be 2 integers [out, in], is {k[0]} of shape {list(k[1])}")
    out_f, in_f = (int(v) for v in read(f"{name}.weight_shape").tolist())
    if not (0 < out_f < 2**31 and 0 < in_f < 2**31):
        raise TensorpressError(f"{name}.weight_shape: [{out_f}, {in_f}] is not the shape of a weight")
    return out_f, in_f


def check_packed(name: str, scheme: QuantScheme, kind: Kind, out_f: int, in_f: int, sparse: bool = False) -> None:
    """Every tensor of packed module `name` against its quantization_config scheme, from headers only:
    packed width for num_bits, scale shape for the group size, zero points exactly when asymmetric.
    (A pruned module's packed codes hold only the kept weights: their width is checked on decode.)"""
    groups = scheme.groups(in_f)
    expect: dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]] = {
        "weight_packed": (("I32",), None if sparse else (out_f, packed_words(in_f, scheme.bits))),
        "weight_scale": (FLOATS, (out_f, groups)),
    }
    if not scheme.symmetric:
        expect["weight_zero_point"] = (("I32",), (packed_words(out_f, scheme.bits), groups))
    elif kind(f"{name}.weight_zero_point") is not None:
        raise TensorpressError(f"{name}.weight_zero_point: stored, but quantization_config says {describe(scheme)}")
    for part, (dtypes, shape) in expect.items():
        k = kind(f"{name}.{part}")
        if k is None:
            raise TensorpressError(f"{name}.{part}: missing, and quantization_config's {describe(scheme)} needs it")
        if k[0] not in dtypes or (shape is not None and k[1] != shape) or (shape is None and len(k[1]) != 2):
            want = f"{dtypes[0]} {list(shape)}" if shape else f"2-D {dtypes[0]}"
            raise TensorpressError(
                f"{name}.{part}: {k[0]} {list(k[1])}, but {describe(scheme)} on a {out_f}×{in_f} weight stores {want}"
            )


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
