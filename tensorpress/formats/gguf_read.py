"""Reading a tensorpress GGUF output back: dense weights (gguf-py's dequantizer, Llama's q/k rows put back
in HF order), sizes and per-tensor types. `config.json["tensorpress"]["gguf"]` names the file and the HF
name → type of every tensor written, so nothing has to be guessed from llama.cpp's names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch

from tensorpress.errors import TensorpressError
from tensorpress.formats.gguf_names import gguf_tensor_name, llama_unpermute_rows, resolve_gguf_arch


def gguf_output(folder: Path) -> dict | None:
    """The `gguf` entry of a tensorpress GGUF output's config.json (None for any other folder)."""
    cfg_path = Path(folder) / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return None
    entry = (cfg.get("tensorpress") or {}).get("gguf") if isinstance(cfg, dict) else None
    return entry if isinstance(entry, dict) else None


def _tensors(folder: Path, entry: dict) -> tuple[Path, dict[str, gguf.ReaderTensor]]:
    path = Path(folder) / str(entry.get("file", "model.gguf"))
    if not path.is_file():
        raise TensorpressError(f"{folder}: config.json names GGUF file {path.name}, which is missing")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf-py raises ValueError/struct errors on damaged files
        raise TensorpressError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
    return path, {t.name: t for t in reader.tensors}


def read_gguf_weights(folder: Path, hf_config: dict, entry: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 tensor) for every tensor the output's config lists."""
    path, by_name = _tensors(folder, entry)
    model_type = str(hf_config.get("model_type"))
    arch = resolve_gguf_arch(model_type)
    n_layers = int(hf_config["num_hidden_layers"])
    n_head = int(hf_config["num_attention_heads"])
    n_kv = int(hf_config.get("num_key_value_heads") or n_head)
    for hf_name, type_name in entry.get("tensors", {}).items():
        gname = gguf_tensor_name(hf_name, arch, n_layers)
        t = by_name.get(gname)
        if t is None:
            raise TensorpressError(f"{path}: tensor {gname} ({hf_name}) is missing")
        if t.tensor_type.name != type_name:
            raise TensorpressError(f"{path}: {gname} is {t.tensor_type.name}, config.json says {type_name}")
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32, copy=False)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml lists dims innermost first
        w = w.reshape(shape)
        if arch == gguf.MODEL_ARCH.LLAMA and re.search(r"\.attn_[qk]\.(weight|bias)$", gname):
            w = llama_unpermute_rows(w, n_head, n_head if ".attn_q." in gname else n_kv)
        yield hf_name, torch.from_numpy(np.array(w, dtype=np.float32, copy=True))


def gguf_tensor_table(folder: Path, entry: dict) -> list[dict]:
    """name, llama.cpp name, type, shape (HF order), bytes of every tensor of the output's file."""
    _, by_name = _tensors(folder, entry)
    rows = []
    for t in by_name.values():
        rows.append(
            {
                "gguf_name": t.name,
                "type": t.tensor_type.name,
                "shape": [int(d) for d in reversed(t.shape.tolist())],
                "bytes": int(t.n_bytes),
            }
        )
    return rows


def gguf_size_stats(folder: Path, entry: dict) -> dict:
    """size_stats() of a GGUF output: quantized = block-typed weights other than the token embedding."""
    path, by_name = _tensors(folder, entry)
    quant_bytes = quant_weights = params = 0
    modules = 0
    for t in by_name.values():
        n = int(np.prod(t.shape))
        params += n
        if t.tensor_type.name not in ("F32", "F16", "BF16") and t.name != "token_embd.weight":
            quant_bytes += int(t.n_bytes)
            quant_weights += n
            modules += 1
    size = path.stat().st_size
    return {
        "size_bytes": size,
        "params": params,
        "quantized_modules": modules,
        "quantized_weights": quant_weights,
        "quantized_bytes": quant_bytes,
        "bits_per_weight": 8 * quant_bytes / quant_weights if quant_weights else None,
        "bits_per_param_overall": 8 * size / params if params else None,
    }
