"""The compressed-tensors `pack-quantized` layout.

Each b-bit signed code q is stored as the unsigned value q + 2^(b-1), densely packed LSB-first into
int32 words along the packed dimension: element i occupies bits [i·b, (i+1)·b) of the row's bit stream,
straddling word boundaries when 32 is not a multiple of b (compressed-tensors ≥ 0.13 layout).
Weights pack along the input dimension; asymmetric zero points pack along the output dimension.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF


def packed_words(n: int, bits: int) -> int:
    """int32 words needed for n codes of `bits` bits."""
    return math.ceil(n * bits / 32)


def pack_int32(codes: torch.Tensor, bits: int, dim: int = 1) -> torch.Tensor:
    """(rows, cols) int8 codes → int32 words, packed along `dim`."""
    if dim == 0:
        return pack_int32(codes.t(), bits, 1).t().contiguous()
    rows, cols = codes.shape
    v = codes.to(torch.int64) + (1 << (bits - 1))  # unsigned, in [0, 2^b)
    padded = math.ceil(cols / 32) * 32
    v = torch.nn.functional.pad(v, (0, padded - cols)).reshape(rows, -1, 32)  # (rows, blocks, 32)
    out = torch.zeros(rows, v.shape[1], bits + 1, dtype=torch.int64)  # one spare word for overflow
    for j in range(32):
        start = j * bits
        word, off = divmod(start, 32)
        out[:, :, word] |= (v[:, :, j] << off) & _MASK32
        if off + bits > 32:
            out[:, :, word + 1] |= v[:, :, j] >> (32 - off)
    out = out[:, :, :bits].reshape(rows, -1)[:, : packed_words(cols, bits)]
    # Reinterpret the low 32 bits as signed int32.
    out = torch.where(out >= 1 << 31, out - (1 << 32), out)
    return out.to(torch.int32).contiguous()


def unpack_int32(packed: torch.Tensor, bits: int, n: int, dim: int = 1) -> torch.Tensor:
    """int32 words → (rows, n) int8 codes (or (n, cols) when dim=0)."""
    if dim == 0:
        return unpack_int32(packed.t(), bits, n, 1).t().contiguous()
    rows, words = packed.shape
    blocks = math.ceil(n / 32)
    w = packed.to(torch.int64) & _MASK32
    w = torch.nn.functional.pad(w, (0, blocks * bits + 1 - words)).reshape(rows, -1)
    out = torch.empty(rows, blocks, 32, dtype=torch.int64)
    mask = (1 << bits) - 1
    for j in range(32):
        start = j * bits
        word, off = divmod(start, 32)
        idx = torch.arange(blocks) * bits + word
        val = w[:, idx] >> off
        if off + bits > 32:
            val = val | (w[:, idx + 1] << (32 - off))
        out[:, :, j] = val & mask
    codes = out.reshape(rows, -1)[:, :n] - (1 << (bits - 1))
    return codes.to(torch.int8)
