"""Write a compressed HF causal LM as one GGUF file that llama.cpp (and transformers' GGUF loader) read.

tensorpress holds weights in HF naming and orientation, as floats or as packed ggml block bytes;
llama.cpp expects its own tensor names, Llama's q/k rows permuted (rotate-half → interleaved pairs),
its metadata keys and the tokenizer as metadata (`gguf_vocab`). The container is gguf-py's
`GGUFWriter` and the names come from gguf-py's `TensorNameMap`, so we stay in step with llama.cpp.

Architectures: HF `llama`, `mistral` (both GGUF `llama`) and `qwen2`; anything else is an error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tensorpress.errors import TensorpressError
from tensorpress.formats.gguf_meta import add_kv
from tensorpress.formats.gguf_names import gguf_tensor_name, llama_permute_rows, resolve_gguf_arch
from tensorpress.formats.gguf_vocab import TOKENIZER_KEYS, pad_tokenizer_kv, tokenizer_kv_from_dir


@dataclass
class GGUFTensor:
    """One tensor to export, described in HF terms.

    ``data`` is the float array in HF orientation ``(out, in)`` for F32/F16/BF16, or the packed ggml block
    bytes (``uint8``, shape ``(rows, row_bytes)``) for quantized types. ``shape`` is always the logical HF
    shape, so quantized tensors can be validated against it.
    """

    hf_name: str
    data: np.ndarray
    ggml_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]


_FLOAT_TYPES = {
    gguf.GGMLQuantizationType.F32: np.float32,
    gguf.GGMLQuantizationType.F16: np.float16,
}

# HF tensors that carry no weights llama.cpp needs (buffers some old checkpoints still save).
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

# --------------------------------------------------------------------------------------------------------------
# architecture + tensor names
# --------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------
# Llama q/k row permutation
# --------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------
# model metadata
# --------------------------------------------------------------------------------------------------------------


def _rope_params(hf_config: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope_theta, rope scaling dict) from either the legacy keys or transformers v5's ``rope_parameters``."""
    params = hf_config.get("rope_parameters") or {}
    theta = hf_config.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = hf_config.get("rope_scaling") or {}
    if not scaling and params.get("rope_type", "default") != "default":
        scaling = params
    return float(theta), dict(scaling)


def _llama3_rope_factors(scaling: Mapping[str, Any], theta: float, rot_dim: int) -> np.ndarray:
    """Per-frequency divisors for Llama 3.x rope scaling, stored by llama.cpp as ``rope_freqs.weight``.

    llama.cpp divides each rotary frequency by this factor; this reproduces HF's "llama3" rope_type
    (long wavelengths slowed by ``factor``, short ones kept, a smooth blend in between).
    """
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)  # (rot_dim/2,)
    wavelen = 2 * math.pi / freqs
    out = np.empty_like(freqs)
    for i, wl in enumerate(wavelen):
        if wl < old_ctx / high:
            out[i] = 1.0
        elif wl > old_ctx / low:
            out[i] = factor
        else:
            smooth = (old_ctx / wl - low) / (high - low)
            out[i] = 1.0 / ((1 - smooth) / factor + smooth)
    return out.astype(np.float32)


def _add_model_kv(
    writer: gguf.GGUFWriter, hf_config: Mapping[str, Any], name: str, file_type: int | None
) -> np.ndarray | None:
    """Hyper-parameters under llama.cpp's keys; returns llama3 rope factors if a rope_freqs tensor is needed."""

    def need(key: str) -> Any:
        if hf_config.get(key) is None:
            raise TensorpressError(f"hf_config is missing {key!r}, needed for GGUF metadata")
        return hf_config[key]

    n_head = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    head_dim = int(hf_config.get("head_dim") or hidden // n_head)
    writer.add_type("model")
    writer.add_name(name)
    if file_type is not None:
        writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(int(need("vocab_size")))
    writer.add_context_length(int(hf_config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(need("num_hidden_layers")))
    writer.add_feed_forward_length(int(need("intermediate_size")))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(hf_config.get("num_key_value_heads") or n_head))
    writer.add_layer_norm_rms_eps(float(hf_config.get("rms_norm_eps") or 1e-6))
    if hf_config.get("head_dim") is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    theta, scaling = _rope_params(hf_config)
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim)

    rope_type = scaling.get("rope_type") or scaling.get("type")
    if not rope_type or rope_type == "default":
        return None
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        return None
    if rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        if scaling.get("original_max_position_embeddings"):
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        return None
    if rope_type == "llama3":
        return _llama3_rope_factors(scaling, theta, head_dim)
    raise TensorpressError(f"rope scaling type {rope_type!r} is not supported by the GGUF exporter")


# --------------------------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------------------------


def _expected_tensors(arch: gguf.MODEL_ARCH, hf_config: Mapping[str, Any], tied: bool) -> set[str]:
    """The GGUF tensors llama.cpp will look for, so a missing one fails here rather than at load time."""
    n_layers = int(hf_config["num_hidden_layers"])
    names = {"token_embd.weight", "output_norm.weight"}
    if not tied:
        names.add("output.weight")
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    bias = arch == gguf.MODEL_ARCH.QWEN2 or bool(hf_config.get("attention_bias"))
    for i in range(n_layers):
        names.update(f"blk.{i}.{t}.weight" for t in per_layer)
        if bias:
            names.update(f"blk.{i}.{t}.bias" for t in ("attn_q", "attn_k", "attn_v"))
    return names


def _prepare_tensor(t: GGUFTensor) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Validate a tensor against its declared type/shape; return the array to store and its ggml type."""
    qtype = gguf.GGMLQuantizationType(t.ggml_type)
    shape = tuple(int(s) for s in t.shape)
    data = np.asarray(t.data)
    if qtype in _FLOAT_TYPES:
        if data.dtype.kind != "f":
            raise TensorpressError(f"{t.hf_name}: {qtype.name} tensor must hold floats, got {data.dtype}")
        if data.shape != shape:
            raise TensorpressError(f"{t.hf_name}: data shape {data.shape} != declared shape {shape}")
        return np.ascontiguousarray(data.astype(_FLOAT_TYPES[qtype], copy=False)), qtype
    if qtype == gguf.GGMLQuantizationType.BF16 and data.dtype.kind == "f":
        if data.shape != shape:
            raise TensorpressError(f"{t.hf_name}: data shape {data.shape} != declared shape {shape}")
        return np.ascontiguousarray(gguf.quants.quantize(data.astype(np.float32), qtype)), qtype
    if qtype not in gguf.GGML_QUANT_SIZES:
        raise TensorpressError(f"{t.hf_name}: unknown ggml type {qtype!r}")
    if data.dtype != np.uint8:
        raise TensorpressError(f"{t.hf_name}: {qtype.name} tensor must be raw uint8 block bytes, got {data.dtype}")
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise TensorpressError(f"{t.hf_name}: last dim {shape[-1]} is not a multiple of the {qtype.name} block {block}")
    byte_shape = (*shape[:-1], shape[-1] // block * type_size)  # (rows, row_bytes)
    if data.size != math.prod(byte_shape):
        raise TensorpressError(
            f"{t.hf_name}: {data.size} bytes given, {qtype.name} of shape {shape} needs {math.prod(byte_shape)}"
        )
    return np.ascontiguousarray(data.reshape(byte_shape)), qtype


def write_gguf(
    path: Path,
    hf_config: Mapping[str, Any],
    tokenizer_dir: Path | None = None,
    tensors: Iterable[GGUFTensor] = (),
    *,
    name: str | None = None,
    file_type: int | None = None,
    pre: str | None = None,
    tokenizer_source: Path | Mapping[str, Any] | None = None,
) -> None:
    """Write ``tensors`` + metadata + tokenizer as a llama.cpp-compatible GGUF file at ``path``.

    ``tokenizer_source`` may replace ``tokenizer_dir``: a tokenizer directory, or the dict returned by
    :func:`copy_tokenizer_kv` (to keep a GGUF input's tokenizer verbatim). Llama/Mistral q/k rows are permuted
    here. For tied-embedding models ``lm_head.weight`` is dropped (llama.cpp then reuses token_embd).
    Tensors are spooled to a temp file as they arrive, so the iterable may be a generator over a big model.
    The file appears atomically: on any error nothing is left at ``path``.
    """
    path = Path(path)
    model_type = hf_config.get("model_type")
    arch = resolve_gguf_arch(str(model_type))
    n_layers = int(hf_config.get("num_hidden_layers") or 0)
    n_vocab = int(hf_config.get("vocab_size") or 0)
    n_head = int(hf_config.get("num_attention_heads") or 0)
    n_head_kv = int(hf_config.get("num_key_value_heads") or n_head)
    tied = bool(hf_config.get("tie_word_embeddings", False))
    permute_qk = arch == gguf.MODEL_ARCH.LLAMA
    if not (n_layers and n_vocab and n_head):
        raise TensorpressError("hf_config needs num_hidden_layers, vocab_size and num_attention_heads")
    source_name = hf_config.get("_name_or_path") or hf_config.get("_model_name_or_path") or ""
    model_name = name or Path(str(source_name)).name or gguf.MODEL_ARCH_NAMES[arch]

    source = tokenizer_source if tokenizer_source is not None else tokenizer_dir
    if source is None:
        raise TensorpressError("write_gguf needs tokenizer_dir or tokenizer_source")
    if isinstance(source, Mapping):
        tok_kv = dict(source)
    else:
        tok_kv = tokenizer_kv_from_dir(Path(source), hf_config, pre=pre, name_hint=name)
    if pre is not None:
        tok_kv[TOKENIZER_KEYS.PRE] = pre
    tok_kv = pad_tokenizer_kv(tok_kv, n_vocab)

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch], use_temp_file=True)
    tmp_path = path.with_name(path.name + ".partial")
    try:
        rope_factors = _add_model_kv(writer, hf_config, model_name, file_type)
        value_types = getattr(source, "value_types", {})
        for key, value in tok_kv.items():
            add_kv(writer, key, value, value_types)

        written: set[str] = set()
        if rope_factors is not None:
            writer.add_tensor("rope_freqs.weight", rope_factors)  # (head_dim/2,) f32
            written.add("rope_freqs.weight")
        for t in tensors:
            if t.hf_name.endswith(_IGNORED_SUFFIXES):
                continue
            if tied and t.hf_name == "lm_head.weight":
                continue  # llama.cpp falls back to token_embd when output.weight is absent
            gname = gguf_tensor_name(t.hf_name, arch, n_layers)
            if gname in written:
                raise TensorpressError(f"tensor {gname} ({t.hf_name}) given twice")
            data, qtype = _prepare_tensor(t)
            if gname == "token_embd.weight" and t.shape[0] != n_vocab:
                raise TensorpressError(f"embedding has {t.shape[0]} rows but vocab_size is {n_vocab}")
            if permute_qk and re.search(r"\.attn_[qk]\.(weight|bias)$", gname):
                heads_kv = n_head if ".attn_q." in gname else n_head_kv
                data = llama_permute_rows(data, n_head, heads_kv)  # (out, in) / (out,) / (out, row_bytes)
            writer.add_tensor(gname, data, raw_dtype=qtype)
            written.add(gname)

        missing = _expected_tensors(arch, hf_config, tied) - written
        if missing:
            shown = ", ".join(sorted(missing)[:8])
            raise TensorpressError(f"{len(missing)} tensor(s) llama.cpp needs were not given: {shown}")

        writer.write_header_to_file(path=tmp_path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp_path, path)
    except BaseException:
        writer.close()
        if writer.temp_file is not None:
            writer.temp_file.close()
        tmp_path.unlink(missing_ok=True)
        raise
