"""GGUF metadata as values: reading a file's key/values, copying a GGUF input's tokenizer keys, and adding
typed key/values to a writer (the tokenizer builder is gguf_vocab.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tensorpress.errors import TensorpressError

# Pre-tokenizer split regexes of known byte-level BPE families, as written in their tokenizer.json files.
# Matching them lets us pick llama.cpp's `tokenizer.ggml.pre` from what the tokenizer does, not its name.

_T = gguf.Keys.Tokenizer
_VT = gguf.GGUFValueType
_KNOWN_KV_TYPES: dict[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]] = {
    _T.MODEL: (_VT.STRING, None),
    _T.PRE: (_VT.STRING, None),
    _T.LIST: (_VT.ARRAY, _VT.STRING),
    _T.TOKEN_TYPE: (_VT.ARRAY, _VT.INT32),
    _T.SCORES: (_VT.ARRAY, _VT.FLOAT32),
    _T.MERGES: (_VT.ARRAY, _VT.STRING),
    _T.PRECOMPILED_CHARSMAP: (_VT.ARRAY, _VT.UINT8),
    _T.CHAT_TEMPLATE: (_VT.STRING, None),
    _T.CHAT_TEMPLATES: (_VT.ARRAY, _VT.STRING),
    _T.HF_JSON: (_VT.STRING, None),
    _T.ADD_BOS: (_VT.BOOL, None),
    _T.ADD_EOS: (_VT.BOOL, None),
    _T.ADD_PREFIX: (_VT.BOOL, None),
}


def _field_value(field: Any) -> Any:
    """Plain Python value of a GGUFReader field (arrays become lists)."""
    value = field.contents()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def read_gguf_meta(path: Path) -> dict[str, Any]:
    """All KV metadata of a GGUF file as plain Python values (the ``GGUF.*`` header pseudo-keys excluded)."""
    reader = gguf.GGUFReader(str(path))
    return {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


class TokenizerKV(dict):
    """``tokenizer.*`` metadata as plain values, plus the GGUF value types of keys copied from a file.

    Keeping the source types means keys this module does not know (llama.cpp grows new ones) round-trip
    with exactly the type llama.cpp reads them as.
    """

    def __init__(self, *args: Any, value_types: Mapping[str, tuple[Any, Any]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.value_types: dict[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]] = dict(value_types or {})


def copy_tokenizer_kv(src_gguf: Path) -> TokenizerKV:
    """The ``tokenizer.*`` metadata of an existing GGUF, to pass as ``tokenizer_source`` to :func:`write_gguf`.

    This is how a GGUF input keeps its exact tokenizer (including any llama.cpp-specific keys) on re-export.
    """
    reader = gguf.GGUFReader(str(src_gguf))
    kv = TokenizerKV()
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kv[key] = _field_value(field)
        if field.types:
            kv.value_types[key] = (field.types[0], field.types[-1] if field.types[0] == _VT.ARRAY else None)
    if _T.LIST not in kv:
        raise TensorpressError(f"{src_gguf} has no tokenizer metadata ({_T.LIST} missing)")
    return kv


def _scalar_type(key: str, value: Any) -> gguf.GGUFValueType:
    if isinstance(value, bool):
        return _VT.BOOL
    if isinstance(value, int):
        return _VT.INT32 if value < 0 else _VT.UINT32
    if isinstance(value, float):
        return _VT.FLOAT32
    if isinstance(value, str):
        return _VT.STRING
    raise TensorpressError(f"cannot store metadata {key!r} of type {type(value).__name__}")


def add_kv(
    writer: gguf.GGUFWriter,
    key: str,
    value: Any,
    value_types: Mapping[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]],
) -> None:
    """Write one metadata value with llama.cpp's expected GGUF type (known table, then source type, then guess)."""
    if key == _T.CHAT_TEMPLATE and isinstance(value, list):
        writer.add_chat_template(value)  # list of {name, template}: gguf-py spreads it over several keys
        return
    vtype, sub = _KNOWN_KV_TYPES.get(key) or value_types.get(key) or (None, None)
    if vtype is None:
        if isinstance(value, (list, tuple)):
            vtype = _VT.ARRAY
            sub = _scalar_type(key, value[0]) if value else _VT.UINT32
        else:
            vtype = _scalar_type(key, value)
    writer.add_key_value(key, value, vtype, sub)
