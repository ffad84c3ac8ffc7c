"""llama.cpp's names for a Hugging Face checkpoint: architecture, tensor names (gguf-py's maps), and the q/k
row permutation its converter applies to Llama-family attention (and its inverse, for reading back)."""

from __future__ import annotations

from functools import lru_cache

import gguf
import numpy as np

from tensorpress.errors import TensorpressError

# HF model_type -> GGUF arch. Mistral is the Llama graph in llama.cpp (its sliding window is ignored there).
_HF_TO_GGUF_ARCH: dict[str, gguf.MODEL_ARCH] = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "mistral": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
}


def resolve_gguf_arch(arch: str | gguf.MODEL_ARCH) -> gguf.MODEL_ARCH:
    """Map an HF ``model_type`` (or a GGUF arch name / enum) to the GGUF arch; raise for anything unsupported."""
    if isinstance(arch, gguf.MODEL_ARCH):
        if arch in _HF_TO_GGUF_ARCH.values():
            return arch
        raise TensorpressError(f"GGUF export does not support architecture {gguf.MODEL_ARCH_NAMES[arch]!r}")
    if arch in _HF_TO_GGUF_ARCH:
        return _HF_TO_GGUF_ARCH[arch]
    for enum_value in set(_HF_TO_GGUF_ARCH.values()):
        if gguf.MODEL_ARCH_NAMES[enum_value] == arch:
            return enum_value
    raise TensorpressError(
        f"GGUF export does not support architecture {arch!r}; supported HF model_type values: "
        f"{', '.join(sorted(_HF_TO_GGUF_ARCH))}"
    )


@lru_cache(maxsize=16)
def _name_map(arch: gguf.MODEL_ARCH, n_layers: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(arch, n_layers)


def gguf_tensor_name(hf_name: str, arch: str | gguf.MODEL_ARCH, n_layers: int) -> str:
    """llama.cpp's name for an HF tensor, e.g. ``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``.

    Uses gguf-py's ``TensorNameMap`` (the same table llama.cpp's converter uses) so names never drift.
    """
    name = _name_map(resolve_gguf_arch(arch), n_layers).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise TensorpressError(f"no GGUF tensor name for {hf_name!r} (arch {arch!r}, {n_layers} layers)")
    return name


def _llama_row_index(n_rows: int, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """Source-row index such that ``w[idx]`` is llama.cpp's layout.

    HF stores each head's rows in "rotate-half" order: the first half of the head dim holds the first
    element of every rotary pair, the second half the second one. llama.cpp's rope wants the pair elements
    next to each other. So within a head of ``d`` rows, GGUF row ``2*i + j`` is HF row ``j*d/2 + i``.
    """
    heads = n_head_kv if n_head_kv is not None and n_head_kv != n_head else n_head
    if heads <= 0 or n_rows % (2 * heads):
        raise TensorpressError(f"cannot permute {n_rows} rows into {heads} heads of rotary pairs")
    half = n_rows // heads // 2
    # [head, j (which half), i] -> [head, i, j]: the pair elements (j) become adjacent.
    return np.arange(n_rows).reshape(heads, 2, half).transpose(0, 2, 1).reshape(-1)


def llama_permute_rows(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Reorder the rows (leading dim) of a Llama q_proj/k_proj weight or bias from HF to llama.cpp layout.

    Only whole rows move, so this works on float weights ``(out, in)``, 1-D biases ``(out,)`` and packed
    quantized rows ``(out, row_bytes)`` alike. For k_proj pass ``n_head_kv`` (GQA): the permutation is per
    kv head then.
    """
    return w[_llama_row_index(w.shape[0], n_head, n_head_kv)]


def llama_unpermute_rows(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Inverse of :func:`llama_permute_rows` (llama.cpp layout back to HF layout)."""
    return w[np.argsort(_llama_row_index(w.shape[0], n_head, n_head_kv))]
