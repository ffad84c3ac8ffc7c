"""Lossless entropy coding of one tensor into independent frames, and its exact inverse.

Why this shape: trained weights spend most of their bits on sign and mantissa, which are close to
uniform, while the exponent takes a handful of values (≈2.6 bits of entropy in 8). So each value is
split into byte streams by field; the skewed streams go through zstd's Huffman literal stage (zstd
tuned so it finds next to no matches: min_match 7, a 64-entry hash table, target_length 0 so literal
compression stays on), the uniform ones are stored raw. Layouts, per value of the tensor:

    bf16 (s e7..e0 m6..m0)   fast: exp byte e ─zstd, byte (s|m) raw              ≈ 2.67 + 8 bits
                             max:  byte (s|e6..e0) ─zstd, byte m ─zstd (7 live bits → ≈7.0),
                                   bit e7 packed 8 per byte ─zstd (≈0: |w| < 2)    ≈ 3.65 + 6.98 bits
    fp32                      its top 16 bits exactly as bf16, the low 16 mantissa bits raw
    fp16 (s e4..e0 m9..m0)    high byte (s|e|m9 m8) ─zstd, low byte raw
    b-bit packed codes        int32 words unpacked to codes, ⌊8/b⌋ codes per byte ─zstd
                              (for b = 4 that is the packed bytes themselves: Huffman over code pairs)
    anything else             its bytes ─zstd

A tensor is cut into frames of about 1 MiB of raw bytes; every frame is decoded on its own (threads:
zstd and numpy release the GIL) and carries the CRC32 of its decoded bytes, so all frames verified is
the whole tensor verified. The frame table lives in JSON next to the coded bytes; every size in it is
checked against the coded bytes before anything is allocated.
"""

from __future__ import annotations

import math
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import zstandard

from tensorpress.errors import TensorpressError
from tensorpress.formats.pack_quantized import pack_int32, unpack_int32
from tensorpress.formats.safetensors_io import DTYPE_NAMES, DTYPES

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


# ---- layouts: a frame's raw bytes ⇄ byte streams (each "z" zstd-coded, "r" stored raw) ----------------


def _split_bf16(b: np.ndarray, level: str) -> list[np.ndarray]:
    """b: (2n,) uint8 holding bf16 patterns (s e7..e0 m6..m0) → byte streams."""
    u = b.view(np.uint16)
    if level == "fast":
        return [(u >> 7).astype(np.uint8), ((u >> 8) & 0x80).astype(np.uint8) | (u & 0x7F).astype(np.uint8)]
    x = ((u >> 8) & 0x80).astype(np.uint8) | ((u >> 7) & 0x7F).astype(np.uint8)  # sign + low 7 exponent bits
    e7 = np.packbits((u >> 14).astype(np.uint8) & 1, bitorder="little")
    return [x, (u & 0x7F).astype(np.uint8), e7]


def _join_bf16(streams: list[np.ndarray], n: int, level: str, out: np.ndarray) -> None:
    """Inverse of _split_bf16 into out: (2n,) uint8. In-place 16-bit passes (the fastest numpy way)."""
    u = out.view(np.uint16)
    t = np.empty_like(u)
    if level == "fast":
        e, sm = streams
        np.copyto(u, e, casting="unsafe")
        np.left_shift(u, 7, out=u)  # exponent in place, sign bit still 0
        np.copyto(t, sm, casting="unsafe")
        np.left_shift(t, 8, out=t)
        np.bitwise_and(t, 0x8000, out=t)
        np.bitwise_or(u, t, out=u)
        np.copyto(t, sm, casting="unsafe")
        np.bitwise_and(t, 0x7F, out=t)
        np.bitwise_or(u, t, out=u)
        return
    x, m, e7 = streams
    np.copyto(u, x, casting="unsafe")
    np.left_shift(u, 7, out=u)  # sign at bit 14 for now, exponent bits 6..0 in place
    np.bitwise_and(u, 0x4000, out=t)
    np.bitwise_xor(u, t, out=u)
    np.left_shift(t, 1, out=t)
    np.bitwise_or(u, t, out=u)
    np.bitwise_or(u, m, out=u, casting="unsafe")
    if e7.any():  # |w| ≥ 2 somewhere in the frame
        np.copyto(t, np.unpackbits(e7, count=n, bitorder="little"), casting="unsafe")
        np.left_shift(t, 14, out=t)
        np.bitwise_or(u, t, out=u)


@dataclass(frozen=True)
class Layout:
    """How one dtype's values become streams: kinds[i] is 'z' (zstd) or 'r' (raw) for stream i."""

    name: str
    itemsize: int
    kinds: tuple[str, ...]

    def stream_sizes(self, n: int) -> list[int]:
        """Decoded byte size of each stream for a frame of n values."""
        return [math.ceil(n / 8) if k == "zb" else n * w for k, w in zip(self.kinds, self._widths(), strict=True)]

    def _widths(self) -> tuple[int, ...]:
        return _WIDTHS[self.name]


_WIDTHS = {
    "bf16-fast": (1, 1),
    "bf16-max": (1, 1, 0),
    "fp32-fast": (1, 1, 2),
    "fp32-max": (1, 1, 0, 2),
    "fp16": (1, 1),
    "bytes": (1,),
}
LAYOUTS = {
    "bf16-fast": Layout("bf16-fast", 2, ("z", "r")),
    "bf16-max": Layout("bf16-max", 2, ("z", "z", "zb")),
    "fp32-fast": Layout("fp32-fast", 4, ("z", "r", "r")),
    "fp32-max": Layout("fp32-max", 4, ("z", "z", "zb", "r")),
    "fp16": Layout("fp16", 2, ("z", "r")),
    "bytes": Layout("bytes", 1, ("z",)),
}


def split(layout: str, raw: np.ndarray) -> list[np.ndarray]:
    """raw: (n·itemsize,) uint8 of one frame → streams."""
    if layout.startswith("bf16"):
        return _split_bf16(raw, layout[5:])
    if layout.startswith("fp32"):
        w = raw.reshape(-1, 4)  # little-endian: bytes 2, 3 are the bf16 top half
        top = np.ascontiguousarray(w[:, 2:]).reshape(-1)
        return [*_split_bf16(top, layout[5:]), np.ascontiguousarray(w[:, :2]).reshape(-1)]
    if layout == "fp16":
        return [raw[1::2], raw[0::2]]
    return [raw]


def join(layout: str, streams: list[np.ndarray], out: np.ndarray) -> None:
    """streams → raw bytes of one frame, written into out: (n·itemsize,) uint8."""
    if layout.startswith("bf16"):
        _join_bf16(streams, out.size // 2, layout[5:], out)
    elif layout.startswith("fp32"):
        w = out.reshape(-1, 4)
        top = np.empty(2 * w.shape[0], dtype=np.uint8)
        _join_bf16(streams[:-1], w.shape[0], layout[5:], top)
        w[:, 2:] = top.reshape(-1, 2)
        w[:, :2] = streams[-1].reshape(-1, 2)
    elif layout == "fp16":
        out[1::2] = streams[0]
        out[0::2] = streams[1]
    else:
        out[:] = streams[0]


def layout_for(dtype: torch.dtype, level: str) -> str:
    if dtype == torch.bfloat16:
        return f"bf16-{level}"
    if dtype == torch.float32:
        return f"fp32-{level}"
    if dtype == torch.float16:
        return "fp16"
    return "bytes"


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
    return zlib.crc32(raw), out


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
        [p.size // itemsize, crc, *(len(s) for s in streams)] for p, (crc, streams) in zip(pieces, coded, strict=True)
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

    Returns (layout, decoded byte size, [(values, crc, offset, stream lengths)]). Every bound a crafted
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
        values = rows * math.ceil(words * 32 // bits / (8 // bits))
    else:
        values = _numel(shape) * itemsize // layout.itemsize
        if layout.name != "bytes" and layout.itemsize != itemsize:
            raise bad(f"layout {layout.name} does not fit dtype {entry['dtype']}")
    out, offset, total = [], 0, 0
    for f in frames:
        if not isinstance(f, list) or len(f) != 2 + len(layout.kinds) or not all(isinstance(v, int) for v in f):
            raise bad("malformed frame")
        n, crc, lens = f[0], f[1], f[2:]
        if not 0 < n <= MAX_FRAME_ELEMS or any(v < 0 for v in lens):
            raise bad(f"frame of {n} values")
        for kind, size, ln in zip(layout.kinds, layout.stream_sizes(n), lens, strict=True):
            if (kind == "r" and ln != size) or (kind != "r" and ln * ZSTD_MAX_RATIO < size):
                raise bad(f"a stream of {ln} bytes cannot hold {size}")
        out.append((n, crc, offset, lens))
        offset += sum(lens)
        total += n
    if total != values:
        raise bad(f"frames hold {total} values, the shape needs {values}")
    if offset != coded_size:
        raise bad(f"frames span {offset} bytes, {coded_size} are stored")
    return layout, values * layout.itemsize, out


def decode_tensor(name: str, coded: np.ndarray, entry: dict, threads: int | None = None) -> torch.Tensor:
    """Coded bytes (uint8) + table entry → the exact original tensor; any damage names the tensor."""
    layout, nbytes, frames = _plan(name, entry, coded.size)
    raw = np.empty(nbytes, dtype=np.uint8)
    pos, starts = 0, []
    for n, *_ in frames:
        starts.append(pos)
        pos += n * layout.itemsize

    def run(i: int) -> None:
        n, crc, offset, lens = frames[i]
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
        if zlib.crc32(dest) != crc:
            raise TensorpressError(f"tensor {name}: checksum mismatch in frame {i}: the file is corrupt")

    _map(run, list(range(len(frames))), threads)
    dtype = DTYPES[entry["dtype"]]
    if "codes_bits" in entry:
        rows, words = entry["shape"]
        return bytes_to_codes(raw, entry["codes_bits"], rows, words)
    if raw.size == 0:
        return torch.empty(entry["shape"], dtype=dtype)
    return torch.from_numpy(raw).view(dtype).reshape(entry["shape"])
