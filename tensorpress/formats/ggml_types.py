"""llama.cpp's block quantization types as grids a quantizer can round onto exactly.

Every supported type stores, per sub-block of `sub` weights along a row, a scale s and an offset o,
and dequantizes a code q as

    w = s · q − o          (float32, s and o formed exactly as ggml/gguf-py form them)

so a quantizer (RTN, GPTQ) that picks codes against (s, o) computes with bit-for-bit the weights that
llama.cpp and gguf-py's `dequantize` will see. The types differ only in how s and o are stored:

| type | block | sub | codes q | s | o |
|---|---|---|---|---|---|
| Q8_0 | 32 | 32 | −127…127 | fp16 d | 0 |
| Q4_0 / Q5_0 | 32 | 32 | −8…7 / −16…15 | fp16 d | 0 |
| Q4_1 / Q5_1 | 32 | 32 | 0…15 / 0…31 | fp16 d | −fp16 m |
| Q2_K | 256 | 16 | 0…3 | fp16 d · 4-bit sc | fp16 dmin · 4-bit m |
| Q3_K | 256 | 16 | −4…3 | fp16 d · 6-bit signed sc | 0 |
| Q4_K / Q5_K | 256 | 32 | 0…15 / 0…31 | fp16 d · 6-bit sc | fp16 dmin · 6-bit m |
| Q6_K | 256 | 16 | −32…31 | fp16 d · int8 sc | 0 |

`compressors/ggml_fit.py` chooses the stored parameters of whole blocks; here `grid` turns them into
per-weight (s, o), `round_codes` puts weights on that grid and `pack` writes codes and parameters as
the type's bytes (gguf-py's `dequantize` of those bytes is the oracle in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tensorpress.formats.quantized import QuantScheme

QK_K = 256


@dataclass(frozen=True)
class GGMLType:
    name: str
    ggml_id: int  # gguf.GGMLQuantizationType value
    block: int  # weights per block
    sub: int  # weights per sub-block sharing one (s, o)
    qmin: int
    qmax: int
    affine: bool  # has an offset o
    sc_max: int  # K-types: largest sub-scale integer (0 for the 32-blocks, whose d is the scale)
    sc_signed: bool  # K-types: sub-scales may be negative
    type_size: int  # bytes per block
    bits: int  # bits of a code

    def scheme(self) -> QuantScheme:
        """The record's scheme for reports: code bits, sub-block length, whether it has mins."""
        return QuantScheme(self.bits, self.sub, not self.affine, ggml=self.name)

    @property
    def nsub(self) -> int:
        return self.block // self.sub

    @property
    def k_quant(self) -> bool:
        return self.block == QK_K

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block


TYPES: dict[str, GGMLType] = {
    t.name: t
    for t in [
        GGMLType("Q8_0", 8, 32, 32, -127, 127, False, 0, False, 34, 8),
        GGMLType("Q4_0", 2, 32, 32, -8, 7, False, 0, False, 18, 4),
        GGMLType("Q4_1", 3, 32, 32, 0, 15, True, 0, False, 20, 4),
        GGMLType("Q5_0", 6, 32, 32, -16, 15, False, 0, False, 22, 5),
        GGMLType("Q5_1", 7, 32, 32, 0, 31, True, 0, False, 24, 5),
        GGMLType("Q2_K", 10, QK_K, 16, 0, 3, True, 15, False, 84, 2),
        GGMLType("Q3_K", 11, QK_K, 16, -4, 3, False, 31, True, 110, 3),
        GGMLType("Q4_K", 12, QK_K, 32, 0, 15, True, 63, False, 144, 4),
        GGMLType("Q5_K", 13, QK_K, 32, 0, 31, True, 63, False, 176, 5),
        GGMLType("Q6_K", 14, QK_K, 16, -32, 31, False, 127, True, 210, 6),
    ]
}


def ggml_type(name: str) -> GGMLType:
    try:
        return TYPES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown GGUF type {name!r}; known: {', '.join(TYPES)}") from None


@dataclass
class BlockParams:
    """Stored parameters of (R, nb) blocks. Floats hold fp16-representable values (as float32).

    32-blocks: d (R, nb) and, affine, m (R, nb) (the added min). K-types: d, dmin (R, nb) and integer
    sub-scales sc, sub-mins mi (R, nb, nsub) (mi only for affine types).
    """

    d: torch.Tensor
    dmin: torch.Tensor | None = None
    sc: torch.Tensor | None = None
    mi: torch.Tensor | None = None
    m: torch.Tensor | None = None


def fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest fp16 value, kept as float32 (how d, dmin and m are stored)."""
    return x.to(torch.float16).float()


def grid(t: GGMLType, p: BlockParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sub-block scale s and offset o, (R, nb, nsub), formed exactly as the dequantizer forms them."""
    if not t.k_quant:
        s = p.d[..., None]
        o = -p.m[..., None] if t.affine else None
        return s, o
    s = p.d[..., None] * p.sc.float()
    o = p.dmin[..., None] * p.mi.float() if t.affine else None
    return s, o


def round_codes(x: torch.Tensor, s: torch.Tensor, o: torch.Tensor | None, t: GGMLType) -> torch.Tensor:
    """Nearest code of every weight on its grid: q = clamp(round((x + o) / s)). Same shapes (broadcast)."""
    num = x + o if o is not None else x
    safe = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.round(num / safe)
    q = torch.where(s == 0, torch.zeros_like(q), q)
    return q.clamp_(t.qmin, t.qmax)


def dequant(q: torch.Tensor, s: torch.Tensor, o: torch.Tensor | None) -> torch.Tensor:
    """w = s·q − o in float32 (the order of operations matters for bit-exactness)."""
    w = s * q
    return w - o if o is not None else w


# ---------------------------------------------------------------------------------------------------
# Packing: codes (R, nb, block) and parameters → the type's bytes (R, nb · type_size), numpy uint8.


def _f16_bytes(v: torch.Tensor) -> np.ndarray:
    return v.to(torch.float16).numpy().view(np.uint8).reshape(*v.shape, 2)


def _nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo & 0x0F) | ((hi & 0x0F) << 4)


def pack(t: GGMLType, q: torch.Tensor, p: BlockParams) -> np.ndarray:
    """Bytes of R rows of nb blocks each: uint8 (R, nb · type_size), ggml's block layout."""
    R, nb, B = q.shape
    qq = q.numpy().astype(np.int32) - t.qmin if not t.affine else q.numpy().astype(np.int32)
    qq = qq.astype(np.uint8)  # unsigned codes as stored: q − qmin for the symmetric types
    n = R * nb
    qq = qq.reshape(n, B)
    d = _f16_bytes(p.d).reshape(n, 2)
    if t.name == "Q8_0":
        parts = [d, (qq.astype(np.int16) + t.qmin).astype(np.int8).view(np.uint8)]
    elif t.name in ("Q4_0", "Q4_1"):
        qs = _nibbles(qq[:, :16], qq[:, 16:])
        parts = [d, _f16_bytes(p.m).reshape(n, 2), qs] if t.affine else [d, qs]
    elif t.name in ("Q5_0", "Q5_1"):
        qh = np.packbits((qq >> 4) & 1, axis=-1, bitorder="little")  # 4 bytes = uint32 LE, bit i of q[i]
        qs = _nibbles(qq[:, :16], qq[:, 16:])
        parts = [d, _f16_bytes(p.m).reshape(n, 2), qh, qs] if t.affine else [d, qh, qs]
    elif t.name == "Q2_K":
        scales = (p.sc.numpy().astype(np.uint8) & 0x0F) | (p.mi.numpy().astype(np.uint8) << 4)
        # element e = g·128 + s·32 + l  →  byte g·32 + l, bits 2s
        qs = qq.reshape(n, 2, 4, 32)
        qs = (qs[:, :, 0] | (qs[:, :, 1] << 2) | (qs[:, :, 2] << 4) | (qs[:, :, 3] << 6)).reshape(n, 64)
        parts = [scales.reshape(n, 16), qs, d, _f16_bytes(p.dmin).reshape(n, 2)]
    elif t.name == "Q3_K":
        code = qq.astype(np.int16) + t.qmin  # signed −4…3
        hbit = (code >= 0).astype(np.uint8)  # stored high bit 1 ⇔ no −4 offset
        low = (code + 4 * (1 - hbit)).astype(np.uint8)  # 0…3
        hm = hbit.reshape(n, 8, 32)  # element e = b·32 + l → byte l, bit b
        hmask = np.zeros((n, 32), np.uint8)
        for b in range(8):
            hmask |= hm[:, b] << b
        ql = low.reshape(n, 2, 4, 32)
        qs = (ql[:, :, 0] | (ql[:, :, 1] << 2) | (ql[:, :, 2] << 4) | (ql[:, :, 3] << 6)).reshape(n, 64)
        s6 = (p.sc.numpy().astype(np.int16) + 32).astype(np.uint8).reshape(n, 16)
        lsc = _nibbles(s6[:, :8], s6[:, 8:])
        hs = (s6 >> 4).reshape(n, 4, 4)  # scale k = s·4 + i → byte 8 + i, bits 2s
        hsc = hs[:, 0] | (hs[:, 1] << 2) | (hs[:, 2] << 4) | (hs[:, 3] << 6)
        parts = [hmask, qs, lsc, hsc, d]
    elif t.name in ("Q4_K", "Q5_K"):
        sc = p.sc.numpy().astype(np.uint8).reshape(n, 8)
        mn = p.mi.numpy().astype(np.uint8).reshape(n, 8)
        scales = np.concatenate(
            [
                sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
                mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4),
            ],
            axis=1,
        )
        lo4 = qq.reshape(n, 4, 2, 32) & 0x0F  # element e = c·64 + h·32 + l → byte c·32 + l, nibble h
        qs = (lo4[:, :, 0] | (lo4[:, :, 1] << 4)).reshape(n, 128)
        parts = [d, _f16_bytes(p.dmin).reshape(n, 2), scales]
        if t.name == "Q5_K":
            hb = ((qq >> 4) & 1).reshape(n, 8, 32)  # element e = b·32 + l → byte l, bit b
            qh = np.zeros((n, 32), np.uint8)
            for b in range(8):
                qh |= hb[:, b] << b
            parts.append(qh)
        parts.append(qs)
    elif t.name == "Q6_K":
        lo4 = (qq & 0x0F).reshape(n, 2, 2, 64)  # element e = g·128 + h·64 + l → byte g·64 + l, nibble h
        ql = (lo4[:, :, 0] | (lo4[:, :, 1] << 4)).reshape(n, 128)
        hi2 = (qq >> 4).reshape(n, 2, 4, 32)  # element e = g·128 + s·32 + l → byte g·32 + l, bits 2s
        qh = (hi2[:, :, 0] | (hi2[:, :, 1] << 2) | (hi2[:, :, 2] << 4) | (hi2[:, :, 3] << 6)).reshape(n, 64)
        sc = p.sc.numpy().astype(np.int8).view(np.uint8).reshape(n, 16)
        parts = [ql, qh, sc, d]
    else:  # pragma: no cover - TYPES is closed
        raise ValueError(t.name)
    out = np.concatenate([a.astype(np.uint8, copy=False) for a in parts], axis=1)
    assert out.shape[1] == t.type_size, (t.name, out.shape)
    return out.reshape(R, nb * t.type_size)


# ---------------------------------------------------------------------------------------------------
# Whole matrices


@dataclass
class GGMLQuantized:
    """A weight (out, in) on a GGML type's grid: codes, block parameters and the per-weight grid."""

    type: GGMLType
    codes: torch.Tensor  # (out, in) int8
    params: BlockParams  # over (out, in // block) blocks

    @property
    def scheme(self) -> QuantScheme:
        return self.type.scheme()

    def scale_offset(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-weight s and o, (out, in)."""
        s, o = grid(self.type, self.params)
        R = s.shape[0]
        s = s.repeat_interleave(self.type.sub, dim=-1).reshape(R, -1)
        o = o.repeat_interleave(self.type.sub, dim=-1).reshape(R, -1) if o is not None else None
        return s, o

    def divide_rows(self, s: torch.Tensor) -> None:
        """Divide output row r by s[r]: the block factors d, dmin (and Q4_1/Q5_1's m) of the row, rounded
        to fp16 again, so the record stays exactly what the file will hold (codes kept)."""
        p, col = self.params, s.float()[:, None]
        p.d = fp16(p.d / col)
        if p.dmin is not None:
            p.dmin = fp16(p.dmin / col)
        if p.m is not None:
            p.m = fp16(p.m / col)

    def rows(self, rows: slice) -> GGMLQuantized:
        """The quantized weight of a block of rows (one module of a stacked call)."""
        p = self.params

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return x[rows].contiguous() if x is not None else None

        params = BlockParams(d=cut(p.d), dmin=cut(p.dmin), sc=cut(p.sc), mi=cut(p.mi), m=cut(p.m))
        return GGMLQuantized(self.type, self.codes[rows].contiguous(), params)

    def dequantize(self) -> torch.Tensor:
        s, o = self.scale_offset()
        return dequant(self.codes.float(), s, o)

    def to_bytes(self) -> np.ndarray:
        R, n = self.codes.shape
        nb = n // self.type.block
        return pack(self.type, self.codes.reshape(R, nb, self.type.block), self.params)
