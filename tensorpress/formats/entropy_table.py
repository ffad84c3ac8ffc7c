"""The frame table of an entropy-coded shard: JSON under the shard metadata key `tensorpress.entropy`, one entry per
tensor (dtype, shape, layout, stream sizes, digests). Read here without the codecs (sizes, inspect)."""

from __future__ import annotations

import json

from tensorpress.errors import TensorpressError

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
