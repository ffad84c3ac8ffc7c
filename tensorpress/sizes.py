"""Byte accounting of a checkpoint folder: what the compressed weights really cost on disk."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from tensorpress.formats.safetensors_io import SafetensorsReader, TensorInfo, read_header, weight_files
from tensorpress.lossless import coded_table

PACKED_PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")
COUNTED_PARTS = PACKED_PARTS[:3]  # what bits/weight counts: codes, scales, zero points (not the shape)

# Tensor name pattern → component, for "bytes by component"; the first matching row wins, anything
# unmatched is "unquantized". New tensor kinds add a row here.
COMPONENT_RULES: tuple[tuple[str, str], ...] = (
    ("*.weight_packed", "codes"),
    ("*.weight_shape", "codes"),  # a few bytes of packing bookkeeping per module
    ("*.weight_scale", "scales"),
    ("*.weight_zero_point", "scales"),
    ("*mask*", "masks"),
    ("*.svd_u", "factors"),
    ("*.svd_v", "factors"),
    ("*eora_a", "factors"),
    ("*eora_b", "factors"),
)
COMPONENTS = ("codes", "scales", "masks", "factors", "unquantized")


def tensor_component(name: str) -> str:
    """Which part of the compressed representation a stored tensor is (see COMPONENT_RULES)."""
    for pattern, component in COMPONENT_RULES:
        if fnmatchcase(name, pattern):
            return component
    return "unquantized"


def bytes_by_component(folder: Path) -> dict[str, int]:
    """Tensor data bytes per component (headers excluded), every component listed, in COMPONENTS order."""
    out = dict.fromkeys(COMPONENTS, 0)
    for f in weight_files(Path(folder)):
        for name, info in read_header(f)[0].items():
            comp = tensor_component(name)
            out[comp] = out.get(comp, 0) + info.nbytes
    return out


def size_stats(folder: Path) -> dict:
    """Sizes of a checkpoint; bits_per_weight counts codes, scales and zero points of quantized Linears."""
    files = weight_files(Path(folder))
    infos: dict[str, TensorInfo] = {}
    coded: dict[str, dict] = {}  # entropy-coded tensors: their bytes are the coded bytes, their shape is here
    for f in files:
        header, meta = read_header(f)
        infos.update(header)
        coded.update(coded_table(meta, str(f)))
    modules = sorted(n[: -len(".weight_packed")] for n in infos if n.endswith(".weight_packed"))
    quant_bytes = sum(infos[f"{m}.{p}"].nbytes for m in modules for p in COUNTED_PARTS if f"{m}.{p}" in infos)
    quant_weights = 0
    with SafetensorsReader(files) as r:
        for m in modules:
            out_f, in_f = r.get(f"{m}.weight_shape").tolist()
            quant_weights += int(out_f) * int(in_f)
    other_params = sum(_numel(coded.get(n, i)) for n, i in infos.items() if not n.endswith(PACKED_PARTS))
    total_bytes = sum(f.stat().st_size for f in files)
    params = quant_weights + other_params
    return {
        "size_bytes": total_bytes,
        "params": params,
        "quantized_modules": len(modules),
        "quantized_weights": quant_weights,
        "quantized_bytes": quant_bytes,
        "bits_per_weight": 8 * quant_bytes / quant_weights if quant_weights else None,
        "bits_per_param_overall": 8 * total_bytes / params if params else None,
    }


def _numel(info: TensorInfo | dict) -> int:
    n = 1
    for d in info["shape"] if isinstance(info, dict) else info.shape:
        n *= d
    return n
