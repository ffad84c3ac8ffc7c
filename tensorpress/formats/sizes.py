"""Byte accounting of a checkpoint folder: what the compressed weights really cost on disk.

A compressed Linear is counted with everything it stores: integer codes, scales, zero points, sparsity
masks and N:M indices, kept values, low-rank factors and EoRA corrections. Its weight count is the
dense (out × in) it replaces, so bits_per_weight compares with 16 for an untouched BF16 weight.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from tensorpress.formats.entropy_table import coded_table
from tensorpress.formats.gguf_read import gguf_output, gguf_size_stats, gguf_tensor_table
from tensorpress.formats.safetensors_io import SafetensorsReader, TensorInfo, read_header, weight_files

PACKED_PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")
COUNTED_PARTS = PACKED_PARTS[:3]  # what bits/weight counts: codes, scales, zero points (not the shape)
SPARSE_PARTS = ("weight_mask", "weight_mask_index", "weight_values")
FACTOR_MARKERS = (".svd_u.", ".svd_v.")
EORA_MARKERS = (".eora_a", ".eora_b")


def compressed_modules(infos: dict[str, TensorInfo]) -> dict[str, list[str]]:
    """Compressed module → the names of every tensor it stores (shape tensors included)."""
    groups: dict[str, list[str]] = {}
    for n in infos:
        stem = None
        for marker in FACTOR_MARKERS + EORA_MARKERS:
            if marker in n or n.endswith(marker):
                stem = n[: n.index(marker)]
                break
        if stem is None:
            owner, _, part = n.rpartition(".")
            if part in PACKED_PARTS or part in SPARSE_PARTS:
                stem = owner
        if stem is not None:
            groups.setdefault(stem, []).append(n)
    return groups


def _dense_shape(
    stem: str, names: list[str], infos: dict[str, TensorInfo], r: SafetensorsReader, coded: dict | None = None
) -> tuple[int, int]:
    """(out, in) of the dense weight a compressed module replaces (entropy-coded tensors: shape from `coded`)."""

    def shape(prefix: str) -> tuple[int, int]:
        if f"{prefix}.weight_shape" in infos:
            out_f, in_f = r.get(f"{prefix}.weight_shape").tolist()
            return int(out_f), int(in_f)
        key = f"{prefix}.weight"
        if coded and key in coded:
            return tuple(coded[key]["shape"])  # type: ignore[return-value]
        return tuple(infos[key].shape)  # type: ignore[return-value]

    if any(".svd_u." in n for n in names):
        return shape(f"{stem}.svd_u")[0], shape(f"{stem}.svd_v")[1]
    return shape(stem)


# Tensor name pattern → component, for "bytes by component"; the first matching row wins, anything
# unmatched is "unquantized". New tensor kinds add a row here.
COMPONENT_RULES: tuple[tuple[str, str], ...] = (
    ("*.weight_packed", "codes"),
    ("*.weight_shape", "codes"),  # a few bytes of packing bookkeeping per module
    ("*.weight_scale", "scales"),
    ("*.weight_zero_point", "scales"),
    ("*mask*", "masks"),
    ("*.svd_u", "factors"),
    ("*.svd_u.*", "factors"),  # stored as M.svd_u.weight (or its packed codes, matched above)
    ("*.svd_v", "factors"),
    ("*.svd_v.*", "factors"),
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
    """Tensor data bytes per component (headers excluded), every component listed, in COMPONENTS order.

    GGUF outputs: a block type's bytes interleave codes and scales; they count as codes."""
    out = dict.fromkeys(COMPONENTS, 0)
    entry = gguf_output(Path(folder))
    if entry is not None:
        for row in gguf_tensor_table(Path(folder), entry):
            out["unquantized" if row["type"] in ("F32", "F16", "BF16") else "codes"] += row["bytes"]
        return out
    for f in weight_files(Path(folder)):
        for name, info in read_header(f)[0].items():
            comp = tensor_component(name)
            out[comp] = out.get(comp, 0) + info.nbytes
    return out


def size_stats(folder: Path) -> dict:
    """Sizes of a checkpoint; bits_per_weight counts every stored tensor of its compressed Linears."""
    entry = gguf_output(Path(folder))
    if entry is not None:
        return gguf_size_stats(Path(folder), entry)
    files = weight_files(Path(folder))
    infos: dict[str, TensorInfo] = {}
    coded: dict[str, dict] = {}  # entropy-coded tensors: their bytes are the coded bytes, their shape is here
    for f in files:
        header, meta = read_header(f)
        infos.update(header)
        coded.update(coded_table(meta, str(f)))
    groups = compressed_modules(infos)
    counted = {n for names in groups.values() for n in names}
    quant_bytes = sum(infos[n].nbytes for n in counted if not n.endswith(".weight_shape") and not n.endswith(".bias"))
    quant_weights = 0
    with SafetensorsReader(files) as r:
        for stem, names in groups.items():
            out_f, in_f = _dense_shape(stem, names, infos, r, coded)
            quant_weights += out_f * in_f
    # Biases of compressed modules stay plain parameters; shape tensors are bookkeeping, not parameters.
    other = [
        coded.get(n, i)
        for n, i in infos.items()
        if (n not in counted or n.endswith(".bias")) and not n.endswith("_shape")
    ]
    other_params = sum(_numel(i) for i in other)
    total_bytes = sum(f.stat().st_size for f in files)
    params = quant_weights + other_params
    return {
        "size_bytes": total_bytes,
        "params": params,
        "quantized_modules": len(groups),
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
