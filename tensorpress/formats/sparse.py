"""On-disk layout of pruned Linear weights, and the decoder for every structural tensor.

Per pruned module `M` (tensorpress names, next to compressed-tensors' own):

- unstructured: `M.weight_mask` uint8 (out, ⌈in/8⌉), 1 bit per weight, LSB-first along the input
  dimension, 1 = kept; the kept values in row-major order follow;
- N:M (n zeros in every m inputs): `M.weight_mask_index` int32, the position of each kept weight inside
  its group of m, ⌈log2 m⌉ bits each, packed like compressed-tensors codes (per row); kept values
  are then a dense (out, in·(m-n)/m) matrix;
- kept values: `M.weight_values` in the checkpoint dtype, or, when a quantizer followed the pruner,
  `M.weight_packed` holding only the kept codes (1 row for unstructured, per row for N:M) plus the usual
  `M.weight_scale` / `M.weight_zero_point`;
- `M.weight_shape` int64 [out, in] always.

So a 50% unstructured BF16 weight costs 1 + 8 bits per weight (56.25% of dense), 2:4 BF16 costs 1 + 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tensorpress.errors import TensorpressError
from tensorpress.formats.pack_quantized import pack_int32, packed_words, unpack_int32
from tensorpress.formats.quantized import QuantizedWeight, QuantScheme, dequantize, expand_groups

SPARSE_PARTS = ("weight_mask", "weight_mask_index", "weight_values")


@dataclass
class SparseWeight:
    """A pruned (out, in) weight. `pattern` (n, m): exactly n zeros in every m consecutive inputs."""

    mask: torch.Tensor  # (out, in) bool, True = kept
    weight: torch.Tensor  # (out, in) float32, 0 where pruned, values as stored when no quantizer follows
    pattern: tuple[int, int] | None = None

    def describe(self) -> dict:
        density = float(self.mask.float().mean())
        kind = f"{self.pattern[0]}:{self.pattern[1]}" if self.pattern else "unstructured"
        return {"sparse": kind, "density": round(density, 6)}


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(rows, n) bool → (rows, ⌈n/8⌉) uint8, bit j of byte k = element 8k + j."""
    rows, n = mask.shape
    pad = math.ceil(n / 8) * 8 - n
    m = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)).reshape(rows, -1, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (m * weights).sum(-1, dtype=torch.int32).to(torch.uint8).contiguous()


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(rows, ⌈n/8⌉) uint8 → (rows, n) bool."""
    bits = (packed.to(torch.int32)[..., None] >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(packed.shape[0], -1)[:, :n].bool()


def index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def nm_positions(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Kept positions inside each group of m: (out, in) bool → (out, in/m · k) int64, ascending per group."""
    out_f, _in_f = mask.shape
    # Row-major kept indices, modulo m: every group holds the same count, so rows line up.
    return (torch.nonzero(mask.reshape(-1)).squeeze(1) % m).reshape(out_f, -1)


def pack_sparse(name: str, sw: SparseWeight, qw: QuantizedWeight | None, dtype: torch.dtype) -> dict:
    out_f, in_f = sw.mask.shape
    t: dict[str, torch.Tensor] = {f"{name}.weight_shape": torch.tensor([out_f, in_f], dtype=torch.int64)}
    if sw.pattern:
        n, m = sw.pattern
        if not bool((sw.mask.reshape(out_f, -1, m).sum(-1) == m - n).all()):
            raise TensorpressError(f"{name}: mask is not {n}:{m}")
        b = index_bits(m)
        idx = nm_positions(sw.mask, m)
        t[f"{name}.weight_mask_index"] = pack_int32((idx - (1 << (b - 1))).to(torch.int8), b, dim=1)
        rows = out_f  # kept entries form a dense (out, in·k/m) matrix
    else:
        t[f"{name}.weight_mask"] = pack_bits(sw.mask)
        rows = 1  # one stream of kept entries, row-major
    if qw is None:
        kept = sw.weight[sw.mask].reshape(rows, -1) if rows > 1 else sw.weight[sw.mask]
        t[f"{name}.weight_values"] = kept.to(dtype).contiguous()
        return t
    kept_codes = qw.codes[sw.mask].reshape(rows, -1)
    t[f"{name}.weight_packed"] = pack_int32(kept_codes, qw.scheme.bits, dim=1)
    t[f"{name}.weight_scale"] = qw.scale.contiguous()
    if qw.zero is not None:
        t[f"{name}.weight_zero_point"] = pack_int32(qw.zero, qw.scheme.bits, dim=0)
    return t


def is_sparse(name: str, names: set[str]) -> bool:
    return f"{name}.weight_mask" in names or f"{name}.weight_mask_index" in names


def decode_mask(name: str, read, names: set[str], out_f: int, in_f: int, nm: tuple[int, int] | None) -> torch.Tensor:
    if f"{name}.weight_mask" in names:
        return unpack_bits(read(f"{name}.weight_mask"), in_f)[:out_f]
    if not nm:
        raise TensorpressError(f"{name}: N:M mask without its pattern in config.json's tensorpress.structure")
    n, m = nm
    b, k, groups = index_bits(m), m - n, in_f // m
    idx = unpack_int32(read(f"{name}.weight_mask_index"), b, groups * k, dim=1).to(torch.int64) + (1 << (b - 1))
    mask = torch.zeros(out_f, groups, m, dtype=torch.bool)
    mask.scatter_(2, idx.reshape(out_f, groups, k), True)
    return mask.reshape(out_f, in_f)


def decode_sparse(name: str, scheme: QuantScheme | None, read, names: set[str], desc: dict | None) -> torch.Tensor:
    """Dense (out, in) float32 weight of a pruned module."""
    out_f, in_f = (int(v) for v in read(f"{name}.weight_shape").tolist())
    kind = (desc or {}).get("sparse", "")
    nm = tuple(int(v) for v in kind.split(":")) if ":" in kind else None
    mask = decode_mask(name, read, names, out_f, in_f, nm)
    nnz = int(mask.sum())
    if scheme is None:
        values = read(f"{name}.weight_values").float().reshape(-1)
        if values.numel() != nnz:
            raise TensorpressError(f"{name}: {values.numel()} stored values for {nnz} kept weights")
        w = torch.zeros(out_f, in_f)
        w[mask] = values
        return w
    rows = out_f if nm else 1
    packed = read(f"{name}.weight_packed")
    if tuple(packed.shape) != (rows, packed_words(nnz // rows, scheme.bits)):
        raise TensorpressError(
            f"{name}.weight_packed: shape {list(packed.shape)} cannot hold {nnz} kept {scheme.bits}-bit codes"
        )
    kept = unpack_int32(packed, scheme.bits, nnz // rows, dim=1).reshape(-1)
    scale = read(f"{name}.weight_scale")
    zero = None
    if not scheme.symmetric:
        zero = unpack_int32(read(f"{name}.weight_zero_point"), scheme.bits, out_f, dim=0)
    codes = (
        expand_groups(zero, in_f, scheme).clone() if zero is not None else torch.zeros(out_f, in_f, dtype=torch.int8)
    )
    codes[mask] = kept
    w = dequantize(codes, scale, zero, scheme)
    return w.masked_fill(~mask, 0.0)


def decode_module(name: str, scheme: QuantScheme | None, read, names: set[str], desc: dict | None) -> torch.Tensor:
    """Dense (out, in) float32 weight of any packed module: quantized, sparse, plus its EoRA correction."""
    from tensorpress.formats.compressed_tensors import decode_weight

    if is_sparse(name, names):
        w = decode_sparse(name, scheme, read, names, desc)
    else:
        w = decode_weight(name, scheme, read)
    if f"{name}.eora_a" in names or f"{name}.eora_a.weight_packed" in names:
        w = w + eora_factor(name, "b", read, names, desc) @ eora_factor(name, "a", read, names, desc)
    return w


def eora_factor(name: str, part: str, read, names: set[str], desc: dict | None) -> torch.Tensor:
    from tensorpress.formats.compressed_tensors import decode_weight

    stem = f"{name}.eora_{part}"
    if stem in names:
        return read(stem).float()
    e = (desc or {}).get("eora") or {}
    if "bits" not in e:
        raise TensorpressError(f"{stem}: quantized EoRA factor but no scheme in tensorpress.structure")
    return decode_weight(stem, QuantScheme(int(e["bits"]), int(e["group_size"]), bool(e.get("symmetric", True))), read)
