"""Reading and writing safetensors files without surprises.

Reading validates the header against the file size first, so a truncated or corrupt file is a
one-line error naming the file rather than a crash deep inside a load. Writing streams tensor bytes
straight to disk (memory stays flat however large the checkpoint) and finishes each shard with a
rename, so no reader ever sees a half-written file under its final name.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch

from tensorpress.errors import TensorpressError
from tensorpress.formats.dtypes import DTYPE_NAMES, DTYPES
from tensorpress.formats.entropy_table import TABLE_KEY, coded_table
from tensorpress.infra.inputs import check_regular, decode_text, load_json_file, parse_json

_MAX_HEADER = 100 * 1024 * 1024

SHARD_BYTES = 512 * 2**20  # the most one output shard holds (as transformers' save_pretrained shards)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(path: Path, name: str, h: object, data_size: int) -> TensorInfo:
    """One header entry, checked field by field against the file's real data size (nothing is read)."""

    def bad(msg: str) -> TensorpressError:
        return TensorpressError(f"{path}: tensor {name}: {msg}")

    if not isinstance(h, dict) or not {"dtype", "shape", "data_offsets"} <= h.keys():
        raise bad("corrupt header entry (needs dtype, shape and data_offsets)")
    dtype, shape, offsets = h["dtype"], h["shape"], h["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(v) for v in offsets):
        raise bad(f"data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad(f"data_offsets [{begin}, {end}] are not 0 ≤ begin ≤ end")
    numel = 1
    for d in shape:
        numel *= d
    itemsize = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    if end - begin != numel * itemsize:
        raise bad(f"shape {shape} of {dtype} is {numel * itemsize} bytes, data_offsets span {end - begin}")
    if end > data_size:
        raise bad(f"ends at byte {end} of a {data_size}-byte data section (truncated file?)")
    return TensorInfo(dtype, tuple(shape), begin, end)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header → ({name: info}, metadata). Raises on any damage.

    Every declared size is checked against the file's size before any tensor byte is read, and no two
    tensors may share bytes (a crafted header could otherwise alias one tensor's data as another's).
    """
    check_regular(path, "safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise TensorpressError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise TensorpressError(f"{path}: corrupt or truncated safetensors header ({n}-byte header declared)")
            blob = f.read(n)
    except OSError as e:
        raise TensorpressError(f"{path}: cannot read ({e.strerror})") from e
    where = f"{path}: safetensors header"
    header = parse_json(decode_text(blob, where), where)
    if not isinstance(header, dict):
        raise TensorpressError(f"{where}: not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TensorpressError(f"{where}: __metadata__ must map strings to strings")
    data_size = size - 8 - n
    infos = {name: _entry(path, name, h, data_size) for name, h in header.items()}
    spans = sorted((i.begin, i.end, name) for name, i in infos.items() if i.nbytes)
    for (_, end_a, a), (begin_b, _, b) in pairwise(spans):
        if begin_b < end_a:
            raise TensorpressError(f"{path}: tensors {a} and {b} overlap (they share bytes {begin_b}-{end_a})")
    return infos, metadata


class SafetensorsReader:
    """Lazy access to the tensors of one or more validated safetensors shards.

    Tensors are read with plain positioned reads into fresh buffers rather than through mmap: mapped
    pages of a multi-GB checkpoint count toward the process's resident memory as they are touched,
    which would make memory grow with model size even though each tensor is dropped after use.
    """

    def __init__(self, files: list[Path]):
        self.files = files
        self.where: dict[str, Path] = {}
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self._data_start: dict[Path, int] = {}
        self._handles: dict[Path, object] = {}
        self.coded: dict[str, dict] = {}  # entropy-coded tensors: name → frame-table entry
        for path in files:
            infos, meta = read_header(path)
            self.metadata.update(meta)
            if TABLE_KEY in meta:
                self.coded.update(coded_table(meta, str(path)))
                self.metadata.pop(TABLE_KEY)
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
            self._data_start[path] = 8 + n
            for name, info in infos.items():
                if name in self.where:
                    raise TensorpressError(f"tensor {name} is stored twice: in {self.where[name]} and in {path}")
                self.where[name] = path
                self.infos[name] = info

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return list(self.where)

    def kind(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """(dtype, shape) of a tensor as readers will see it (decoded form for entropy-coded ones),
        from the headers alone; None when absent."""
        if name not in self.where:
            return None
        entry = self.coded.get(name)
        if entry is None:
            info = self.infos[name]
            return info.dtype, info.shape
        dtype, shape = entry.get("dtype"), entry.get("shape")
        if not isinstance(dtype, str) or not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise TensorpressError(f"{self.where[name]}: tensor {name}: corrupt entropy-coded entry (dtype/shape)")
        return dtype, tuple(shape)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise TensorpressError(f"tensor {name} not found in {', '.join(p.name for p in self.files)}")
        path = self.where[name]
        info = self.infos[name]
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
        fd = self._fd(path)
        view = memoryview(buf.numpy())
        got = 0
        while got < info.nbytes:
            k = os.preadv(fd, [view[got:]], self._data_start[path] + info.begin + got)
            if k <= 0:
                raise TensorpressError(f"{path}: truncated while reading tensor {name}")
            got += k
        entry = self.coded.get(name)
        if entry is not None:  # entropy-coded: decode (and verify) transparently
            from tensorpress.formats.entropy import decode_tensor

            return decode_tensor(name, buf.numpy(), entry)
        return buf.view(DTYPES[info.dtype]).reshape(info.shape)

    def _fd(self, path: Path) -> int:
        fd = self._handles.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise TensorpressError(f"{path}: cannot open ({e.strerror})") from e
            self._handles[path] = fd
        return fd  # type: ignore[return-value]

    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)  # type: ignore[arg-type]
        self._handles.clear()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


INDEX_NAME = "model.safetensors.index.json"


def read_index(folder: Path) -> dict[str, str] | None:
    """The index's weight_map (tensor → shard file name), None without an index.

    Entries must be plain file names inside `folder`: `../x`, absolute paths and sub-paths are refused
    rather than followed (an index is data from the internet; it must not make us read files elsewhere).
    """
    index = folder / INDEX_NAME
    if not (index.exists() or index.is_symlink()):
        return None
    data = load_json_file(index, "index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise TensorpressError(f"index '{index}': weight_map must be a non-empty mapping of tensor → shard file")
    for tensor, fname in weight_map.items():
        if not isinstance(fname, str) or not fname:
            raise TensorpressError(f"index '{index}': weight_map[{tensor!r}] must be a file name, got {fname!r}")
        if "/" in fname or "\\" in fname or fname in (".", ".."):
            raise TensorpressError(
                f"index '{index}': weight_map[{tensor!r}] = {fname!r} is not a file inside {folder}; "
                "refusing to follow it"
            )
    return weight_map


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards of an HF checkpoint folder (index-aware)."""
    weight_map = read_index(folder)
    if weight_map is not None:
        files = [folder / n for n in sorted(set(weight_map.values()))]
        for f in files:
            if not (f.exists() or f.is_symlink()):
                raise TensorpressError(f"index '{folder / INDEX_NAME}': lists {f.name}, which is missing")
        return files
    return sorted(folder.glob("*.safetensors"))


def check_index(folder: Path, reader: SafetensorsReader) -> None:
    """Every tensor the index names lives in the shard it names (so no shard's copy is silently ignored)."""
    for tensor, fname in (read_index(folder) or {}).items():
        where = reader.where.get(tensor)
        if where is None:
            raise TensorpressError(f"index '{folder / INDEX_NAME}': lists tensor {tensor} in {fname}, which lacks it")
        if where.name != fname:
            raise TensorpressError(
                f"index '{folder / INDEX_NAME}': maps tensor {tensor} to {fname}, but it is stored in {where.name}"
            )


@dataclass
class _Shard:
    path: Path
    entries: dict[str, dict] = field(default_factory=dict)
    size: int = 0


class ShardWriter:
    """Streams tensors into safetensors shards of at most `max_shard_bytes` each.

    Tensor bytes go to a temporary data file as they arrive; when a shard is full the header is
    written to the final file, the data appended, and the data file removed.
    """

    def __init__(self, folder: Path, max_shard_bytes: int = SHARD_BYTES, metadata: dict[str, str] | None = None):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self.metadata = dict(metadata or {})
        self.done: list[_Shard] = []
        self._cur: _Shard | None = None
        self._data = None
        self.total_bytes = 0

    def _open(self) -> None:
        k = len(self.done) + 1
        self._cur = _Shard(self.folder / f".shard-{k:05d}.data")
        self._data = open(self._cur.path, "wb")  # noqa: SIM115 - closed by _finish_shard or abort

    def add(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if self._cur is not None and self._cur.size and self._cur.size + nbytes > self.max_shard_bytes:
            self._finish_shard()
        if self._cur is None:
            self._open()
        cur = self._cur
        if name in cur.entries or any(name in s.entries for s in self.done):
            raise TensorpressError(f"internal: tensor {name} written twice")
        cur.entries[name] = {
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [cur.size, cur.size + nbytes],
        }
        if nbytes:
            self._data.write(t.reshape(-1).view(torch.uint8).numpy().data)
        cur.size += nbytes
        self.total_bytes += nbytes

    def _finish_shard(self) -> None:
        cur = self._cur
        self._data.close()
        header = dict(cur.entries)
        header["__metadata__"] = self.metadata
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
        final = cur.path.with_suffix(".safetensors")
        with open(final, "wb") as out, open(cur.path, "rb") as data:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            while chunk := data.read(16 * 1024 * 1024):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        cur.path.unlink()
        cur.path = final
        self.done.append(cur)
        self._cur = None
        self._data = None

    def close(self) -> list[Path]:
        """Finish the last shard and give shards their HF names (+ index when more than one)."""
        if self._cur is not None:
            self._finish_shard()
        n = len(self.done)
        paths = []
        if n == 1:
            dest = self.folder / "model.safetensors"
            self.done[0].path.rename(dest)
            return [dest]
        weight_map = {}
        for k, shard in enumerate(self.done, 1):
            dest = self.folder / f"model-{k:05d}-of-{n:05d}.safetensors"
            shard.path.rename(dest)
            paths.append(dest)
            for name in shard.entries:
                weight_map[name] = dest.name
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return paths

    def abort(self) -> None:
        if self._data is not None:
            self._data.close()
