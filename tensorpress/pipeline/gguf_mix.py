"""Which GGML type each tensor gets under a llama.cpp-style preset (`Q4_K_M`, `Q3_K_M`, …).

The mixes follow llama-quantize's published behaviour, so a tensorpress file and a llama-quantize
file of the same preset have the same type per tensor and the same size, and differ only in how the
values on those grids were chosen:

- the preset's base type everywhere, except
- attention V and FFN down of "more-bits" layers (the first and last eighth, and every third layer in
  between) one or two steps up for the `_M` mixes; attention output up for `Q2_K`/`Q3_K_M`;
- the output head (or, with tied embeddings, the token embedding that doubles as the head) `Q6_K`,
  `Q8_0` when its rows are not a multiple of 256; an untied token embedding gets the base type;
- a type whose block does not divide the row falls back to a 32-block type of at least its bits
  (Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), as llama-quantize does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRESETS = {  # preset → base type
    "Q8_0": "Q8_0",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q6_K": "Q6_K",
    "Q5_K_M": "Q5_K",
    "Q5_K_S": "Q5_K",
    "Q4_K_M": "Q4_K",
    "Q4_K_S": "Q4_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_S": "Q3_K",
    "Q2_K": "Q2_K",
}

FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
BLOCK = {"Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}


@dataclass(frozen=True)
class TensorSlot:
    """One 2-D weight as the mix sees it: its role, its layer and its row width (input features)."""

    role: str  # attn_q attn_k attn_v attn_output ffn_gate ffn_up ffn_down output token_embd
    layer: int  # -1 outside the decoder layers
    ncols: int


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fits(type_name: str, ncols: int) -> bool:
    return ncols % BLOCK.get(type_name, 32) == 0


def with_fallback(type_name: str, ncols: int) -> str:
    """The type itself when its block divides the row, else llama-quantize's 32-block fallback."""
    if fits(type_name, ncols):
        return type_name
    alt = FALLBACK.get(type_name, type_name)
    if not fits(alt, ncols):
        raise ValueError(f"rows {ncols} wide fit neither {type_name} nor {alt}")
    return alt


def preset_type(preset: str, slot: TensorSlot, n_layer: int, n_gqa: int, tied: bool, imatrix: bool = True) -> str:
    """The type of one tensor under `preset` (llama-quantize's choice, fallback included)."""
    p = preset.upper()
    if p not in PRESETS:
        raise ValueError(f"unknown GGUF preset {preset!r}; known: {', '.join(PRESETS)}")
    base = PRESETS[p]
    t = base
    role, i = slot.role, slot.layer
    if role == "output" or (tied and role == "token_embd"):
        if not fits(base, slot.ncols):
            return "Q8_0"
        return "Q8_0" if base == "Q8_0" else with_fallback("Q6_K", slot.ncols)
    if role == "token_embd":
        return with_fallback(base, slot.ncols)
    if role == "attn_v":
        if p == "Q2_K":
            t = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif p == "Q3_K_M":
            t = "Q5_K" if i < 2 else "Q4_K"
        elif p in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_layer):
            t = "Q6_K"
        elif p == "Q4_K_S" and i < 4:
            t = "Q5_K"
    elif role == "ffn_down":
        if p == "Q2_K":
            t = "Q3_K"
        elif p == "Q3_K_M":
            t = "Q5_K" if i < n_layer // 16 else "Q4_K"
        elif p in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_layer):
            t = "Q6_K"
        elif p == "Q4_K_S" and i < n_layer // 8:
            t = "Q5_K"
        elif p in ("Q4_0", "Q5_0") and imatrix and i < n_layer // 8:
            t = "Q4_1" if p == "Q4_0" else "Q5_1"
    elif role == "attn_output":
        if p == "Q2_K":
            t = "Q3_K"
        elif p == "Q3_K_M":
            t = "Q4_K"
    return with_fallback(t, slot.ncols)


FLOAT_TYPES = ("F32", "F16", "BF16")
ROLES = {  # HF module name suffix → llama.cpp tensor role (Llama, Mistral, Qwen2 naming)
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "embed_tokens": "token_embd",
    "lm_head": "output",
}
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def slot_of(module: str, ncols: int) -> TensorSlot:
    """The mix's view of an HF module name (`model.layers.3.mlp.down_proj` → ffn_down of layer 3)."""
    role = next((r for suffix, r in ROLES.items() if module == suffix or module.endswith("." + suffix)), None)
    if role is None:
        raise ValueError(f"{module}: no llama.cpp tensor role for this module")
    m = _LAYER.search(module)
    return TensorSlot(role, int(m.group(1)) if m else -1, ncols)


def mix_types(
    type_or_preset: str, modules: dict[str, int], hf_config: dict, embeddings: str = "auto", pure: bool = False
) -> dict[str, str]:
    """Module name → GGML type name for every 2-D weight in `modules` (name → row width).

    A single block type (not a preset) applies to every quantized module, with llama-quantize's
    fallback where its block does not divide the row; embedding and head follow the preset rules
    of the mix whose base type it is (or `embeddings` when it names a type).
    """
    n_layer = int(hf_config["num_hidden_layers"])
    n_head = int(hf_config["num_attention_heads"])
    n_gqa = n_head // int(hf_config.get("num_key_value_heads") or n_head)
    tied = bool(hf_config.get("tie_word_embeddings", False))
    preset = type_or_preset.upper()
    single = pure or preset not in PRESETS
    base = PRESETS.get(preset, preset)  # Q4_K_M → Q4_K; a block type is its own base
    base_preset = next((p for p, b in PRESETS.items() if b == base), base)
    out: dict[str, str] = {}
    for name, ncols in modules.items():
        slot = slot_of(name, ncols)
        if slot.role in ("token_embd", "output"):
            if embeddings != "auto":
                out[name] = embeddings if embeddings in FLOAT_TYPES else with_fallback(embeddings, ncols)
            else:
                out[name] = preset_type(base_preset, slot, n_layer, n_gqa, tied)
        elif single:
            out[name] = with_fallback(base, ncols)
        else:
            out[name] = preset_type(preset, slot, n_layer, n_gqa, tied)
    return out
