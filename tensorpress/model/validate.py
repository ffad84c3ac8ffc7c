"""Checkpoint validation: config.json and every tensor checked before any work or allocation.

A checkpoint whose tensors disagree with its config used to load into a model that computed garbage
(or crashed deep inside torch). Here, in order, each failing with one line naming the key or tensor:

1. config.json fields: model_type a string, sizes positive integers, heads dividing hidden_size;
2. the config's scale: decoder layers it claims must exist in the shards, and one layer plus the
   embeddings in fp32 must fit in the memory available (so 2^40-wide configs never reach torch);
3. every tensor the meta-device skeleton maps: same shape, and floating point where the model
   computes in floating point (int16/uint8/bool weights are refused);
4. tensors nothing maps: a warning naming them (a checkpoint may carry extras, e.g. old rotary tables).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Protocol

from tensorpress.errors import TensorpressError, TensorpressWarning
from tensorpress.formats.safetensors_io import SafetensorsReader
from tensorpress.infra.resources import check_fits
from tensorpress.model.architecture import Skeleton, build_skeleton


class Opened(Protocol):
    """What validation needs of a `checkpoint.Checkpoint` (which imports this module, not the reverse)."""

    folder: Path
    config_dict: dict
    reader: SafetensorsReader


# Integer sizes a transformers config may carry (names differ per architecture); None allowed where marked.
SIZE_FIELDS = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "vocab_size",
    "intermediate_size",
    "num_key_value_heads",
    "max_position_embeddings",
    "n_embd",
    "n_head",
    "n_layer",
    "n_positions",
    "n_ctx",
    "ffn_dim",
    "word_embed_proj_dim",
    "head_dim",
    "n_inner",
    "sliding_window",
)
NULLABLE = {"head_dim", "n_inner", "sliding_window", "num_key_value_heads", "intermediate_size"}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Bytes of Python/meta bookkeeping per decoder layer of the skeleton (measured ≈ 10-20 KB; rounded up).
SKELETON_BYTES_PER_LAYER = 64 * 1024
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def check_config_dict(cfg: object, where: str) -> dict:
    """Types and ranges of the fields we (and transformers) compute sizes from."""
    if not isinstance(cfg, dict):
        raise TensorpressError(f"{where}: must be a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise TensorpressError(f"{where}: model_type must be a string, got {model_type!r}")
    for key in SIZE_FIELDS:
        if key not in cfg:
            continue
        v = cfg[key]
        if v is None and key in NULLABLE:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise TensorpressError(f"{where}: {key} must be a positive integer, got {v!r}")
        if v < 1:
            raise TensorpressError(f"{where}: {key} must be a positive integer, got {v}")
    for key in ("tensorpress", "quantization_config"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise TensorpressError(f"{where}: {key} must be a mapping, got {type(cfg[key]).__name__}")
    return cfg


def _size(cfg: dict, *keys: str, default: int = 0) -> tuple[str, int]:
    for k in keys:
        if isinstance(cfg.get(k), int):
            return k, cfg[k]
    return keys[0], default


def config_sizes(cfg: dict) -> dict[str, tuple[str, int]]:
    """Role → (config key, value) for the sizes that drive memory, whatever the architecture calls them."""
    hidden = _size(cfg, "hidden_size", "n_embd", "d_model", default=1)
    return {
        "hidden": hidden,
        "heads": _size(cfg, "num_attention_heads", "n_head", default=1),
        "kv_heads": _size(cfg, "num_key_value_heads", default=0),
        "head_dim": _size(cfg, "head_dim", default=0),
        "inter": _size(cfg, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden[1]),
        "vocab": _size(cfg, "vocab_size", default=1),
        "layers": _size(cfg, "num_hidden_layers", "n_layer", default=1),
        "positions": _size(cfg, "max_position_embeddings", "n_positions", default=0),
    }


def check_heads(cfg: dict, where: str) -> None:
    s = config_sizes(cfg)
    (hk, h), (nk, n), (_, kv), (_, head_dim) = s["hidden"], s["heads"], s["kv_heads"], s["head_dim"]
    if not head_dim and h % n:
        raise TensorpressError(f"{where}: {nk} {n} does not divide {hk} {h}")
    if kv and n % kv:
        raise TensorpressError(f"{where}: num_key_value_heads {kv} does not divide {nk} {n}")


def estimate_bytes(sizes: dict[str, tuple[str, int]]) -> int:
    """Peak bytes of the smallest useful run: one decoder layer and the embeddings in fp32, plus the
    skeleton's per-layer bookkeeping and the rotary/position tables built for real at init."""
    h, inter, vocab = sizes["hidden"][1], sizes["inter"][1], sizes["vocab"][1]
    layers, positions = sizes["layers"][1], sizes["positions"][1]
    heads, kv = sizes["heads"][1], sizes["kv_heads"][1] or sizes["heads"][1]
    head_dim = sizes["head_dim"][1] or max(1, h // max(1, heads))
    layer = (2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * inter) * 4
    embeddings = vocab * h * 4
    tables = positions * (h + head_dim) * 4
    return layer + embeddings + tables + layers * SKELETON_BYTES_PER_LAYER


def check_scale(cfg: dict, names: list[str], where: str) -> None:
    """The config's claimed size against the shards and the memory available, before torch sees it."""
    sizes = config_sizes(cfg)
    lkey, n_layers = sizes["layers"]
    found: dict[int, str] = {}
    for n in names:
        if m := _LAYER_INDEX.search(n):
            found.setdefault(int(m.group(1)), n[: m.start(1)])
    if found and n_layers > max(found) + 1:
        missing = max(found) + 1
        raise TensorpressError(
            f"{where}: {lkey} is {n_layers} but the checkpoint holds layers 0-{max(found)} only "
            f"(no tensors {found[max(found)]}{missing}.*)"
        )
    need = estimate_bytes(sizes)

    def culprit() -> str:
        # The key whose shrinking to 1 removes most of the estimate is the one at fault.
        best, gain = sizes["hidden"][0], -1
        for role, (key, value) in sizes.items():
            if role in ("heads", "kv_heads") or value <= 1:
                continue
            smaller = estimate_bytes({**sizes, role: (key, 1)})
            if need - smaller > gain:
                best, gain = f"{key} {value}", need - smaller
        return best

    if need > (1 << 62):  # beyond any machine: no need to ask the OS
        raise TensorpressError(f"{where}: {culprit()} implies ~{need / 2**30:.3g} GiB for one layer; not a real model")
    check_fits(need, lambda: f"{where}: {culprit()}")


def check_tensors(ckpt: Opened, skel: Skeleton) -> None:
    """Every mapped tensor's shape and dtype against the skeleton; unmapped ones are a warning."""
    state = skel.model.state_dict(keep_vars=True)
    for key, disk in skel.name_map.items():
        expected = state[key]
        dtype, shape = ckpt.reader.kind(disk)  # type: ignore[misc]
        where = f"{ckpt.reader.where[disk]}: tensor {disk}"
        if shape != tuple(expected.shape):
            raise TensorpressError(
                f"{where} has shape {list(shape)}, but config.json makes {key} {list(expected.shape)}"
            )
        if expected.is_floating_point() and dtype not in FLOAT_DTYPES:
            raise TensorpressError(f"{where} is {dtype}; {key} needs floating-point values (F32, F16 or BF16)")
    used = set(skel.name_map.values())
    stems = tuple(f"{stem}." for stem in skel.packed.values())
    extra = sorted(n for n in ckpt.reader.names() if n not in used and not n.startswith(stems))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        warnings.warn(
            f"{ckpt.folder}: {len(extra)} tensor(s) not used by {skel.arch}: {shown}", TensorpressWarning, stacklevel=2
        )


def checked_skeleton(ckpt: Opened) -> Skeleton:
    """The meta-device skeleton of a checkpoint whose config and tensors were all checked first."""
    where = f"{ckpt.folder / 'config.json'}"
    cfg = check_config_dict(ckpt.config_dict, where)
    check_heads(cfg, where)
    names = ckpt.reader.names()
    check_scale(cfg, names, where)
    skel = build_skeleton(cfg, names)
    check_tensors(ckpt, skel)
    return skel
