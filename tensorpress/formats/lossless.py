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
from tensorpress.formats.entropy_table import TABLE_KEY
from tensorpress.formats.safetensors_io import SafetensorsReader, ShardWriter, weight_files


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
