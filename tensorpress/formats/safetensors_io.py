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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tensorpress.errors import TensorpressError
from tensorpress.formats.dtypes import DTYPE_NAMES, DTYPES
from tensorpress.formats.entropy_table import TABLE_KEY, coded_table

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header → ({name: info}, metadata). Raises on any damage."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise TensorpressError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise TensorpressError(f"{path}: corrupt or truncated safetensors header")
            header = json.loads(f.read(n))
    except OSError as e:
        raise TensorpressError(f"{path}: cannot read ({e.strerror})") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TensorpressError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise TensorpressError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    data_size = size - 8 - n
    for name, h in header.items():
        try:
            info = TensorInfo(h["dtype"], tuple(int(d) for d in h["shape"]), *map(int, h["data_offsets"]))
        except (KeyError, TypeError, ValueError) as e:
            raise TensorpressError(f"{path}: corrupt header entry for tensor {name}") from e
        if info.dtype not in DTYPES:
            raise TensorpressError(f"{path}: tensor {name} has unsupported dtype {info.dtype}")
        numel = 1
        for d in info.shape:
            numel *= d
        itemsize = torch.empty(0, dtype=DTYPES[info.dtype]).element_size()
        if info.nbytes != numel * itemsize or info.begin < 0:
            raise TensorpressError(f"{path}: corrupt header entry for tensor {name}")
        if info.end > data_size:
            raise TensorpressError(
                f"{path}: truncated: tensor {name} ends at byte {info.end} of a {data_size}-byte data section"
            )
        infos[name] = info
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
                self.where[name] = path
                self.infos[name] = info

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return list(self.where)

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


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards of an HF checkpoint folder (index-aware)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise TensorpressError(f"{index}: corrupt index ({e})") from e
        files = [folder / n for n in names]
        for f in files:
            if not f.is_file():
                raise TensorpressError(f"{index}: lists {f.name}, which is missing")
        return files
    return sorted(folder.glob("*.safetensors"))


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

    def __init__(self, folder: Path, max_shard_bytes: int = 512 * 1024**2, metadata: dict[str, str] | None = None):
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


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    with SafetensorsReader(files) as r:
        for name in r.names():
            yield name, r.get(name)
