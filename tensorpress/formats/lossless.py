"""The lossless stage: rewrite a folder's safetensors shards into entropy-coded form, in place.

Coded shards stay valid safetensors: each tensor keeps its name and becomes a 1-D uint8 tensor of its
frames; the frame table (dtype, shape, layout, per-frame sizes and XXH3-64 digests) is JSON under the shard
metadata key `tensorpress.entropy`. `SafetensorsReader.get` decodes such tensors transparently, so the
loader, `decompress`, `eval` and the pipeline's own readers work unchanged on coded outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from tensorpress.errors import TensorpressError
from tensorpress.formats.entropy import encode_tensor
from tensorpress.formats.safetensors_io import SafetensorsReader, ShardWriter, weight_files

TABLE_KEY = "tensorpress.entropy"


def coded_table(metadata: dict[str, str], where: str) -> dict[str, dict]:
    """The frame table of one shard ({} for a plain shard); a damaged table is an error naming the file."""
    raw = metadata.get(TABLE_KEY)
    if raw is None:
        return {}
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as e:
        raise TensorpressError(f"{where}: corrupt entropy table ({e})") from e
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise TensorpressError(f"{where}: corrupt entropy table")
    return table


def code_folder(folder: Path, level: str, bits: dict[str, int] | None = None, threads: int | None = None) -> dict:
    """Entropy-code every shard of `folder` in place. `bits`: weight_packed tensor name → code width.

    Returns {"raw_bytes", "coded_bytes"} over all tensors. Each shard is rewritten next to itself and
    renamed over the original, one tensor in memory at a time.
    """
    bits = bits or {}
    raw_total = coded_total = 0
    for shard in weight_files(folder):
        work = Path(folder) / f".entropy-{shard.stem}"
        work.mkdir()
        try:
            with SafetensorsReader([shard]) as reader:
                if reader.coded:
                    raise TensorpressError(f"{shard}: already entropy-coded")
                writer = ShardWriter(work, max_shard_bytes=1 << 62, metadata=dict(reader.metadata))
                table = {}
                for name in reader.names():
                    t = reader.get(name)
                    blob, entry = encode_tensor(t, level, bits.get(name), threads)
                    writer.add(name, torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy()))
                    table[name] = entry
                    raw_total += entry["raw_bytes"]
                    coded_total += len(blob)
                writer.metadata[TABLE_KEY] = json.dumps(table, separators=(",", ":"))
                (written,) = writer.close()
            os.replace(written, shard)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _fix_index(Path(folder))
    return {"raw_bytes": raw_total, "coded_bytes": coded_total}


def _fix_index(folder: Path) -> None:
    """The index's total_size is the bytes of the tensors as stored: the coded bytes now."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        with SafetensorsReader(weight_files(folder)) as r:
            data.setdefault("metadata", {})["total_size"] = sum(i.nbytes for i in r.infos.values())
        index.write_text(json.dumps(data, indent=2))


def packed_bits(schemes: dict) -> dict[str, int]:
    """Module name → QuantScheme (pipeline stats) → weight_packed tensor name → bits."""
    return {f"{m}.weight_packed": s.bits for m, s in schemes.items()}


def coded_info(entry: dict | None, coded_bytes: int) -> dict:
    """What `inspect` shows of a coded tensor: its real dtype and shape, raw bytes and the ratio."""
    if entry is None:
        return {}
    info = {
        "dtype": entry.get("dtype"),
        "shape": entry.get("shape"),
        "raw_bytes": entry.get("raw_bytes", 0),
        "ratio": coded_bytes / entry["raw_bytes"] if entry.get("raw_bytes") else None,
        "layout": entry.get("layout"),
    }
    bits = entry.get("codes_bits")
    if bits:
        rows, words = entry["shape"]
        info["codes_bits"] = bits
        info["bits_per_code"] = 8 * coded_bytes / (rows * words * 32 // bits) if rows * words else None
    return info
