"""Structural records shared by the pipeline, the packer and the loader: sparse weights, low-rank
modules and EoRA corrections.

- A pruned Linear keeps its module; `LayerWork.sparse[name]` holds its mask, a `SparseWeight` (defined with
  its byte layout in tensorpress/formats/sparse.py; a later quantizer's codes are packed at the kept positions only).
- A low-rank Linear is replaced by `LowRankLinear` (two real Linears, `svd_v`: in→r then `svd_u`:
  r→out), so quantizers, hooks and the loader treat each factor as an ordinary Linear.
- An EoRA correction B·A is added to the module's weight while the pipeline runs and stored as two
  extra tensors `<name>.eora_b` (out, r) and `<name>.eora_a` (r, in).

config.json["tensorpress"]["structure"] maps module names to what the loader must rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FACTOR_SUFFIXES = (".svd_u", ".svd_v")


@dataclass
class EoRACorrection:
    """W_eff = Ŵ + B·A. b (out, r) and a (r, in) are the values as stored (after any rounding)."""

    b: torch.Tensor
    a: torch.Tensor
    quantized: dict | None = None  # "a"/"b" → QuantizedWeight when the factors are quantized


class LowRankLinear(nn.Module):
    """y = U (V x) + bias with V: (r, in) and U: (out, r); replaces an nn.Linear of the same shape."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.svd_v = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.svd_u = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.svd_u(self.svd_v(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense (out, in) product U·V, for error accounting (not a parameter)."""
        return self.svd_u.weight @ self.svd_v.weight


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def expand_factors(work, targets: list[str]) -> list[str]:
    """A quantizer's targets with every low-rank module replaced by its two factors (V first)."""
    out: list[str] = []
    for name in targets:
        if isinstance(work.linear(name), LowRankLinear):
            out += [name + ".svd_v", name + ".svd_u"]
        else:
            out.append(name)
    return out


def is_factor(name: str) -> bool:
    return name.endswith(FACTOR_SUFFIXES)


def write_structured(writer, full: str, key: str, t: torch.Tensor, work) -> bool:
    """Write one state-dict entry of a layer if it is structural (sparse weight or low-rank factor)."""
    from tensorpress.formats.compressed_tensors import pack_tensors
    from tensorpress.formats.sparse import pack_sparse

    owner = full.rpartition(".")[0]
    if owner in work.sparse and key.endswith("weight"):
        for name, x in pack_sparse(owner, work.sparse[owner], work.quantized.get(owner), work.scale_dtype).items():
            writer.add(name, x)
        return True
    if is_factor(owner):
        if owner in work.quantized and key.endswith("weight"):
            for name, x in pack_tensors(owner, work.quantized[owner]).items():
                writer.add(name, x)
        else:
            writer.add(full, t.to(work.scale_dtype))
        return True
    return False


def write_eora(writer, work) -> None:
    from tensorpress.formats.compressed_tensors import pack_tensors

    for name, corr in work.eora.items():
        for part in ("a", "b"):
            if corr.quantized:
                for n, x in pack_tensors(f"{name}.eora_{part}", corr.quantized[part]).items():
                    writer.add(n, x)
            else:
                writer.add(f"{name}.eora_{part}", getattr(corr, part).to(work.scale_dtype).contiguous())


def fold_lowrank(items):
    """(key, tensor) stream with every low-rank pair `M.svd_u.weight`, `M.svd_v.weight` replaced by the
    dense `M.weight` = U·V (float32 product, in the factors' dtype) and `M.svd_u.bias` by `M.bias`."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in items:
        stem, marker, leaf = None, None, key.rpartition(".")[2]
        for m in FACTOR_SUFFIXES:
            if m + "." in key:
                stem, marker = key[: key.index(m + ".")], m
        if stem is None:
            yield key, t
            continue
        if leaf == "bias":
            yield f"{stem}.bias", t
            continue
        got = pending.setdefault(stem, {})
        got[marker] = t
        if len(got) == 2:
            u, v = got[".svd_u"], got[".svd_v"]
            yield f"{stem}.weight", (u.float() @ v.float()).to(u.dtype)
            del pending[stem]
