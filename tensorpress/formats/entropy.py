"""Lossless entropy coding of one tensor into independent frames, and its exact inverse.

Why this shape: trained weights spend most of their bits on sign and mantissa, which are close to
uniform, while the exponent takes a handful of values (≈2.6 bits of entropy in 8). So each value is
split into byte streams by field; the skewed streams go through zstd's Huffman literal stage (zstd
tuned so it finds next to no matches: min_match 7, a 64-entry hash table, target_length 0 so literal
compression stays on), the near-uniform ones are stored raw. Layouts (bits of one value, MSB first):

    bf16 max  (s e7..e0 m6..m0)  byte e6..e0 m6 ─zstd, byte m5..m0 s ─zstd (7 live bits: ≈7.0),
                                 bit e7 (0 unless |w| ≥ 2), 8 a byte ─zstd      ≈ 3.6 + 7.0 + 0
    bf16 fast, fp16              high byte (sign + 7 exponent bits, resp. s e4..e0 m9 m8) ─zstd,
                                 low byte raw: decodes with one Huffman stream and three numpy passes
    fp32 max / fast              top 16 bits as bf16 max / the high byte coded; the rest raw
    b-bit packed codes           int32 words unpacked to codes, ⌊8/b⌋ codes a byte ─zstd
                                 (for b = 4 those are the packed bytes: Huffman over code pairs)
    anything else                its bytes ─zstd

A tensor is cut into frames of about 1 MiB of raw bytes; each frame decodes on its own (threads: zstd,
numpy and xxhash release the GIL) and carries the XXH3-64 digest of its decoded bytes, so all frames
verified is the whole tensor verified. The frame table lives in JSON next to the coded bytes; every
size in it is checked against the coded bytes before anything is allocated.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import xxhash
import zstandard

from tensorpress.errors import TensorpressError
from tensorpress.formats.dtypes import DTYPE_NAMES, DTYPES
from tensorpress.formats.pack_quantized import pack_int32, unpack_int32

FRAME_BYTES = 1 << 20  # raw bytes per frame
MAX_FRAME_ELEMS = 1 << 22  # a reader refuses frames larger than this (elements)
ZSTD_MAX_RATIO = 1 << 15  # no valid zstd stream expands more than this (an RLE block: 4 bytes → 128 KiB)
LEVELS = ("fast", "max")

# zstd as a Huffman coder: a tiny hash table and the longest minimum match leave almost every byte a
# literal; target_length 0 keeps literal compression on in the fast strategy.
_HUFFMAN_PARAMS = dict(
    strategy=zstandard.STRATEGY_FAST, window_log=20, hash_log=6, chain_log=6, search_log=1, min_match=7, target_length=0
)
_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        params = zstandard.ZstdCompressionParameters(**_HUFFMAN_PARAMS, write_content_size=True)
        c = _local.cctx = zstandard.ZstdCompressor(compression_params=params)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


_pools: dict[int, ThreadPoolExecutor] = {}


def _map(fn, items: list, threads: int | None) -> list:
    n = threads or os.cpu_count() or 1
    if n <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    pool = _pools.get(n)
    if pool is None:
        pool = _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="tp-entropy")
    return list(pool.map(fn, items))


# ---- layouts: a frame's raw bytes ⇄ byte streams ------------------------------------------------------
# Stream kinds: "z" zstd-coded bytes, "zb" zstd-coded bits (8 values a byte), "r" raw bytes (w per value).


@dataclass(frozen=True)
class Layout:
    name: str
    itemsize: int  # bytes per value
    streams: tuple[tuple[str, int], ...]  # (kind, bytes per value) of each stream

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.streams)

    def stream_sizes(self, n: int) -> list[int]:
        """Decoded byte size of each stream for a frame of n values."""
        return [math.ceil(n / 8) if k == "zb" else n * w for k, w in self.streams]


LAYOUTS = {
    lay.name: lay
    for lay in (
        Layout("hilo16", 2, (("z", 1), ("r", 1))),  # bf16 fast, fp16: high byte (sign + exponent) coded
        Layout("hilo32", 4, (("z", 1), ("r", 3))),  # fp32 fast
        Layout("bf16-max", 2, (("z", 1), ("z", 1), ("zb", 0))),
        Layout("fp32-max", 4, (("z", 1), ("z", 1), ("zb", 0), ("r", 2))),
        Layout("bytes", 1, (("z", 1),)),
    )
}


def layout_for(dtype: torch.dtype, level: str) -> str:
    if dtype == torch.bfloat16:
        return "bf16-max" if level == "max" else "hilo16"
    if dtype == torch.float32:
        return "fp32-max" if level == "max" else "hilo32"
    if dtype == torch.float16:
        return "hilo16"
    return "bytes"


def _split_bf16_max(u: np.ndarray) -> list[np.ndarray]:
    """u: (n,) uint16 bf16 patterns (s e7..e0 m6..m0) → [e6..e0 m6, m5..m0 s, packed e7 bits].

    The top mantissa bit rides with the exponent (they are correlated: coding them jointly beats the
    sign there by ≈0.04 bits/weight); sign and the 6 low mantissa bits fill 7 bits of the other byte."""
    x = (u >> 6).astype(np.uint8)  # bits 13..6
    y = ((u & 0x3F) << 1).astype(np.uint8) | (u >> 15).astype(np.uint8)
    e7 = np.packbits((u >> 14).astype(np.uint8) & 1, bitorder="little")
    return [x, y, e7]


def _join_bf16_max(streams: list[np.ndarray], u: np.ndarray) -> None:
    """Inverse of _split_bf16_max into u: (n,) uint16. In-place 16-bit passes (numpy's fastest way)."""
    x, y, e7 = streams
    t = np.empty_like(u)
    np.copyto(u, x, casting="unsafe")
    np.left_shift(u, 6, out=u)  # e6..e0 m6 in place
    np.copyto(t, y, casting="unsafe")
    np.left_shift(t, 15, out=t)  # the sign (y's bit 0) to bit 15, the rest shifted out
    np.bitwise_or(u, t, out=u)
    np.copyto(t, y, casting="unsafe")
    np.right_shift(t, 1, out=t)  # m5..m0
    np.bitwise_or(u, t, out=u)
    if e7.any():  # |w| ≥ 2 somewhere in the frame
        np.copyto(t, np.unpackbits(e7, count=u.size, bitorder="little"), casting="unsafe")
        np.left_shift(t, 14, out=t)
        np.bitwise_or(u, t, out=u)


def split(layout: str, raw: np.ndarray) -> list[np.ndarray]:
    """raw: (n·itemsize,) uint8 of one frame, little-endian values → streams."""
    if layout == "hilo16":
        u = raw.view(np.uint16)
        return [(u >> 8).astype(np.uint8), u.astype(np.uint8)]
    if layout == "hilo32":
        w = raw.reshape(-1, 4)
        return [np.ascontiguousarray(w[:, 3]), np.ascontiguousarray(w[:, :3]).reshape(-1)]
    if layout == "bf16-max":
        return _split_bf16_max(raw.view(np.uint16))
    if layout == "fp32-max":
        w = raw.view(np.uint32)
        low = (w & 0xFFFF).astype(np.uint16).view(np.uint8)
        return [*_split_bf16_max((w >> 16).astype(np.uint16)), low]
    return [raw]


def join(layout: str, streams: list[np.ndarray], out: np.ndarray) -> None:
    """streams → raw bytes of one frame, written into out: (n·itemsize,) uint8."""
    if layout == "hilo16":
        u = out.view(np.uint16)
        np.copyto(u, streams[0], casting="unsafe")
        np.left_shift(u, 8, out=u)
        np.bitwise_or(u, streams[1], out=u, casting="unsafe")
    elif layout == "hilo32":
        w = out.reshape(-1, 4)
        w[:, 3] = streams[0]
        w[:, :3] = streams[1].reshape(-1, 3)
    elif layout == "bf16-max":
        _join_bf16_max(streams, out.view(np.uint16))
    elif layout == "fp32-max":
        hi = np.empty(out.size // 4, dtype=np.uint16)
        _join_bf16_max(streams[:-1], hi)
        w = out.view(np.uint32)
        np.copyto(w, hi, casting="unsafe")
        np.left_shift(w, 16, out=w)
        np.bitwise_or(w, streams[-1].view(np.uint16), out=w, casting="unsafe")
    else:
        out[:] = streams[0]


# ---- integer codes of packed quantized weights -------------------------------------------------------


def codes_to_bytes(packed: torch.Tensor, bits: int) -> np.ndarray | None:
    """(rows, words) int32 pack-quantized words → ⌊8/b⌋ unsigned codes per byte, or None when the words
    hold bits that are not codes (padding in use), so they must be coded as plain bytes."""
    rows, words = packed.shape
    n = words * 32 // bits
    codes = unpack_int32(packed, bits, n).to(torch.int16) + (1 << (bits - 1))  # (rows, n) in [0, 2^b)
    if not torch.equal(pack_int32((codes - (1 << (bits - 1))).to(torch.int8), bits), packed):
        return None
    k = 8 // bits
    c = torch.nn.functional.pad(codes, (0, -n % k)).reshape(rows, -1, k).to(torch.uint8)  # (rows, n/k, k)
    out = torch.zeros(c.shape[:2], dtype=torch.uint8)
    for j in range(k):
        out |= c[:, :, j] << (j * bits)
    return out.reshape(-1).numpy()


def bytes_to_codes(data: np.ndarray, bits: int, rows: int, words: int) -> torch.Tensor:
    """Inverse of codes_to_bytes → (rows, words) int32."""
    n = words * 32 // bits
    k = 8 // bits
    b = torch.from_numpy(data).reshape(rows, -1)  # (rows, ceil(n/k))
    mask = (1 << bits) - 1
    c = torch.stack([(b >> (j * bits)) & mask for j in range(k)], dim=-1).reshape(rows, -1)[:, :n]
    return pack_int32((c.to(torch.int16) - (1 << (bits - 1))).to(torch.int8), bits)


def code_entropy(packed: torch.Tensor, bits: int) -> tuple[int, float]:
    """(number of codes, order-0 empirical entropy in bits per code) of a packed tensor."""
    words = packed.shape[1]
    codes = unpack_int32(packed, bits, words * 32 // bits).reshape(-1).to(torch.int64) + (1 << (bits - 1))
    p = torch.bincount(codes, minlength=1 << bits).double() / codes.numel()
    p = p[p > 0]
    return codes.numel(), float(-(p * p.log2()).sum())


# ---- one tensor ------------------------------------------------------------------------------------


def _encode_frame(layout: str, raw: np.ndarray) -> tuple[int, list[bytes]]:
    lay = LAYOUTS[layout]
    out = []
    for kind, s in zip(lay.kinds, split(layout, raw), strict=True):
        b = np.ascontiguousarray(s).tobytes()
        out.append(_cctx().compress(b) if kind != "r" else b)
    return xxhash.xxh3_64_intdigest(raw), out


def encode_tensor(
    t: torch.Tensor, level: str = "max", bits: int | None = None, threads: int | None = None
) -> tuple[bytes, dict]:
    """Tensor → (coded bytes, entry for the frame table). `bits`: it is a pack-quantized weight_packed."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    t = t.detach().cpu().contiguous()
    entry: dict = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
    raw: np.ndarray | None = None
    if bits is not None and t.dtype == torch.int32 and t.dim() == 2 and 2 <= bits <= 8:
        raw = codes_to_bytes(t, bits)
        if raw is not None:
            entry["codes_bits"] = bits
    if raw is None:
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
        layout = layout_for(t.dtype, level)
    else:
        layout = "bytes"
    itemsize = LAYOUTS[layout].itemsize
    step = max(1, FRAME_BYTES // itemsize) * itemsize
    pieces = [raw[i : i + step] for i in range(0, raw.size, step)]
    coded = _map(lambda p: _encode_frame(layout, p), pieces, threads)
    entry["layout"] = layout
    entry["frames"] = [
        [p.size // itemsize, digest, *(len(s) for s in streams)]
        for p, (digest, streams) in zip(pieces, coded, strict=True)
    ]
    entry["raw_bytes"] = t.numel() * t.element_size()
    return b"".join(s for _, streams in coded for s in streams), entry


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _plan(name: str, entry: dict, coded_size: int) -> tuple[Layout, int, list[tuple[int, int, int, list[int]]]]:
    """Validate a frame-table entry against the coded bytes before any allocation.

    Returns (layout, decoded byte size, [(values, digest, offset, stream lengths)]). Every bound a crafted
    header could abuse is checked: dtype/shape/layout known, frame value counts within bounds and adding
    up to the shape, stream lengths adding up to the coded bytes, and no stream claiming to expand more
    than zstd can (so the decoded size is bounded by the bytes really present in the file).
    """

    def bad(msg: str) -> TensorpressError:
        return TensorpressError(f"tensor {name}: corrupt entropy-coded entry ({msg})")

    try:
        dtype = DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        layout = LAYOUTS[entry["layout"]]
        frames = entry["frames"]
        bits = entry.get("codes_bits")
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"missing or unknown field {e}") from e
    if any(d < 0 for d in shape) or not isinstance(frames, list):
        raise bad("bad shape or frame list")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if bits is not None:
        if len(shape) != 2 or dtype != torch.int32 or bits not in range(2, 9):
            raise bad("codes on a tensor that is not a 2-D int32 packed weight")
        rows, words = shape
        values = rows * -(-(words * 32 // bits) // (8 // bits))  # rows · ⌈codes per row / codes per byte⌉
    else:
        values = _numel(shape) * itemsize // layout.itemsize
        if layout.name != "bytes" and layout.itemsize != itemsize:
            raise bad(f"layout {layout.name} does not fit dtype {entry['dtype']}")
    out, offset, total = [], 0, 0
    for f in frames:
        if not isinstance(f, list) or len(f) != 2 + len(layout.kinds) or not all(isinstance(v, int) for v in f):
            raise bad("malformed frame")
        n, digest, lens = f[0], f[1], f[2:]
        if not 0 < n <= MAX_FRAME_ELEMS or any(v < 0 for v in lens):
            raise bad(f"frame of {n} values")
        for kind, size, ln in zip(layout.kinds, layout.stream_sizes(n), lens, strict=True):
            if (kind == "r" and ln != size) or (kind != "r" and ln * ZSTD_MAX_RATIO < size):
                raise bad(f"a stream of {ln} bytes cannot hold {size}")
        out.append((n, digest, offset, lens))
        offset += sum(lens)
        total += n
    if total != values:
        raise bad(f"frames hold {total} values, the shape needs {values}")
    if offset != coded_size:
        raise bad(f"frames span {offset} bytes, {coded_size} are stored")
    return layout, values * layout.itemsize, out


def check_entry(name: str, entry: dict, coded_size: int) -> None:
    """Validate a frame-table entry against its stored bytes without decoding (what `inspect` needs)."""
    if not isinstance(entry, dict):
        raise TensorpressError(f"tensor {name}: corrupt entropy-coded entry (not a mapping)")
    _plan(name, entry, coded_size)


def decode_tensor(name: str, coded: np.ndarray, entry: dict, threads: int | None = None) -> torch.Tensor:
    """Coded bytes (uint8) + table entry → the exact original tensor; any damage names the tensor."""
    layout, nbytes, frames = _plan(name, entry, coded.size)
    raw = np.empty(nbytes, dtype=np.uint8)
    pos, starts = 0, []
    for n, *_ in frames:
        starts.append(pos)
        pos += n * layout.itemsize

    def run(i: int) -> None:
        n, digest, offset, lens = frames[i]
        dest = raw[starts[i] : starts[i] + n * layout.itemsize]
        streams = []
        for kind, size, ln in zip(layout.kinds, layout.stream_sizes(n), lens, strict=True):
            chunk = coded[offset : offset + ln]
            offset += ln
            if kind == "r":
                streams.append(chunk)
                continue
            try:
                if zstandard.frame_content_size(chunk) != size:
                    raise zstandard.ZstdError("frame declares another size")
                data = _dctx().decompress(chunk, max_output_size=size)
            except zstandard.ZstdError as e:
                raise TensorpressError(f"tensor {name}: corrupt entropy-coded frame {i} ({e})") from e
            if len(data) != size:
                raise TensorpressError(f"tensor {name}: corrupt entropy-coded frame {i} (wrong size)")
            streams.append(np.frombuffer(data, dtype=np.uint8))
        join(layout.name, streams, dest)
        if xxhash.xxh3_64_intdigest(dest) != digest:
            raise TensorpressError(f"tensor {name}: checksum mismatch in frame {i}: the file is corrupt")

    _map(run, list(range(len(frames))), threads)
    dtype = DTYPES[entry["dtype"]]
    if "codes_bits" in entry:
        rows, words = entry["shape"]
        return bytes_to_codes(raw, entry["codes_bits"], rows, words)
    if raw.size == 0:
        return torch.empty(entry["shape"], dtype=dtype)
    return torch.from_numpy(raw).view(dtype).reshape(entry["shape"])
