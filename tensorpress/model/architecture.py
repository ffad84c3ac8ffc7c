"""The model skeleton: a causal LM built on the meta device, whose pieces are filled in on demand.

Only what one stage needs is ever real: the embeddings while calibration inputs are captured, one
decoder layer while it is compressed. Works for any transformers causal LM whose decoder layers sit
in one ModuleList (Llama, Mistral, Qwen2, OPT, GPT-2, ...); GPT-2's Conv1D stores W as (in, out),
which `get_weight`/`set_weight` hide so compressors always see (out, in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tensorpress.errors import TensorpressError
from tensorpress.model.structure import LowRankLinear, replace_module

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment,misc]

LINEAR_TYPES = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)
FINAL_NORM_NAMES = ("model.norm", "model.decoder.final_layer_norm", "transformer.ln_f", "gpt_neox.final_layer_norm")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, LINEAR_TYPES)


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in), whatever the module stores."""
    w = module.weight
    return w.t() if Conv1D and isinstance(module, Conv1D) else w


def set_weight(module: nn.Module, w: torch.Tensor) -> None:
    """Replace the weight's values from an (out, in) tensor, keeping the module's dtype."""
    if Conv1D and isinstance(module, Conv1D):
        w = w.t()
    module.weight.data = w.to(module.weight.dtype).contiguous()


def in_out(module: nn.Module) -> tuple[int, int]:
    w = get_weight(module)
    return w.shape[1], w.shape[0]


@dataclass
class Skeleton:
    """A meta-device model plus the map from its tensor names to the checkpoint's."""

    model: nn.Module
    layers_name: str
    layers: nn.ModuleList
    name_map: dict[str, str]  # model state_dict key → checkpoint tensor name
    tied: set[str]  # model keys that share storage with another key and are absent on disk
    packed: dict[str, str]  # model key "M.weight" → on-disk module name "M" holding M.weight_packed

    @property
    def arch(self) -> str:
        return type(self.model).__name__

    def layer_prefix(self, i: int) -> str:
        return f"{self.layers_name}.{i}."

    def lm_head_name(self) -> str | None:
        head = self.model.get_output_embeddings()
        for name, mod in self.model.named_modules():
            if mod is head:
                return name
        return None

    def source(self, key: str) -> str:
        """The checkpoint tensor behind model key `key`; a tied key (a tied lm_head) is the input embedding's."""
        if key in self.name_map:
            return self.name_map[key]
        emb = self.model.get_input_embeddings()
        for name, mod in self.model.named_modules():
            if mod is emb:
                return self.name_map[f"{name}.weight"]
        raise TensorpressError(f"cannot find the tensor {key} is tied to")

    def head_source(self) -> str:
        """The checkpoint tensor holding the output head's weight (the input embedding's when tied)."""
        return self.source(f"{self.lm_head_name()}.weight")

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def final_norm(self) -> nn.Module | None:
        for name in FINAL_NORM_NAMES:
            try:
                return self.model.get_submodule(name)
            except AttributeError:
                continue
        return None

    def outer_keys(self) -> list[str]:
        """State-dict keys that live outside the decoder layers."""
        prefix = self.layers_name + "."
        return [k for k in self.model.state_dict(keep_vars=True) if not k.startswith(prefix)]


def build_skeleton(config_dict: dict, checkpoint_names: list[str]) -> Skeleton:
    """Build the model on meta (buffers stay real: rotary tables are computed at init)."""
    from accelerate import init_empty_weights
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    cfg = dict(config_dict)
    cfg.pop("quantization_config", None)
    model_type = cfg.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise TensorpressError(f"config.json: unknown model_type '{model_type}'")
    try:
        config = CONFIG_MAPPING[model_type].from_dict(cfg)
    except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as e:
        raise TensorpressError(f"config.json: not a valid {model_type} config ({_first_line(e)})") from e
    try:
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as e:
        archs = ",".join(map(str, cfg.get("architectures") or [model_type or "?"]))
        raise TensorpressError(f"architecture {archs} is not a causal language model tensorpress can load") from e
    except (TypeError, KeyError, AttributeError, ZeroDivisionError, RuntimeError) as e:
        raise TensorpressError(f"config.json: cannot build a {model_type} model from it ({_first_line(e)})") from e
    model.eval()
    substitute_structure(model, (config_dict.get("tensorpress") or {}).get("structure"))  # low-rank modules
    n_layers = getattr(config, "num_hidden_layers", None)
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and n_layers
    ]
    if len(found) != 1:
        raise TensorpressError(
            f"architecture {type(model).__name__} is not supported: cannot find its list of decoder layers"
        )
    layers_name, layers = found[0]
    name_map, tied, packed = _map_names(model, config, set(checkpoint_names))
    return Skeleton(model, layers_name, layers, name_map, tied, packed)


def substitute_structure(model: nn.Module, structure: dict | None) -> None:
    """Rebuild low-rank modules in a (meta) skeleton from config.json's structure entries."""
    for name, desc in (structure or {}).items():
        svd = desc.get("svd") if isinstance(desc, dict) else None
        if not svd:
            continue
        try:
            old = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(old, LowRankLinear):
            continue
        out_f, in_f = get_weight(old).shape
        new = LowRankLinear(in_f, out_f, int(svd["rank"]), old.bias is not None, device="meta")
        replace_module(model, name, new)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _map_names(model: nn.Module, config, on_disk: set[str]) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """Match model keys to checkpoint names (with or without the base-model prefix)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    name_map: dict[str, str] = {}
    tied: set[str] = set()
    packed: dict[str, str] = {}
    state = model.state_dict(keep_vars=True)
    seen: dict[int, str] = {}
    for key, t in state.items():
        candidates = [key]
        if prefix and key.startswith(prefix + "."):
            candidates.append(key[len(prefix) + 1 :])
        elif prefix:
            candidates.append(f"{prefix}.{key}")
        hit = next((c for c in candidates if c in on_disk), None)
        ident = id(t)
        if hit is None and key.endswith(".weight"):
            stem = next(
                (
                    c[: -len(".weight")]
                    for c in candidates
                    for part in ("weight_packed", "weight_mask", "weight_mask_index")  # quantized or sparse
                    if c[: -len("weight")] + part in on_disk
                ),
                None,
            )
            if stem is not None:
                packed[key] = stem
                seen[ident] = key
                continue
        if hit is None:
            if ident in seen or (getattr(config, "tie_word_embeddings", False) and key.endswith("lm_head.weight")):
                tied.add(key)
                continue
            if key.endswith(("attn.bias", "attn.masked_bias")):  # GPT-2 causal-mask buffers, rebuilt at init
                continue
            raise TensorpressError(f"checkpoint has no tensor for {key}")
        name_map[key] = hit
        seen[ident] = key
    return name_map, tied, packed


def materialize(
    module: nn.Module, prefix: str, skel: Skeleton, read, dtype: torch.dtype, device: str, recurse: bool = True
) -> dict[str, torch.dtype]:
    """Fill `module`'s meta parameters from the checkpoint. Returns each key's on-disk dtype."""
    dtypes: dict[str, torch.dtype] = {}
    named = list(module.named_parameters(recurse=recurse)) + list(module.named_buffers(recurse=recurse))
    for key, _ in named:
        full = prefix + key
        if full not in skel.name_map:
            continue
        t = read(skel.name_map[full])
        dtypes[key] = t.dtype
        _assign(module, key, t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype))
    return dtypes


def release(module: nn.Module, recurse: bool = True) -> None:
    """Drop a module's parameters back to meta so its memory is freed."""
    for key, p in list(module.named_parameters(recurse=recurse)):
        _assign(module, key, torch.empty(p.shape, dtype=p.dtype, device="meta"))


def _assign(module: nn.Module, key: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value
