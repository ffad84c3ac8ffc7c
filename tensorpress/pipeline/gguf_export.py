"""GGUF output: the layer loop's staged shards become one `model.gguf` that llama.cpp runs as it is.

The loop writes as always — quantized modules as their block bytes (`M.weight_ggml`), everything else
in its checkpoint dtype — so memory stays at one layer; this pass then streams those tensors into the
GGUF container (formats/gguf_write.py): block bytes verbatim (nothing is re-rounded), the token
embedding and an untied head on the mix's types, norms in F32, other plain weights in their dtype.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gguf
import torch

from tensorpress.compressors.ggml_fit import quantize_rtn
from tensorpress.errors import TensorpressError
from tensorpress.formats.ggml_types import ggml_type
from tensorpress.formats.gguf_meta import copy_tokenizer_kv
from tensorpress.formats.gguf_write import GGUFTensor, write_gguf
from tensorpress.formats.quantized import QuantScheme
from tensorpress.formats.safetensors_io import SafetensorsReader, weight_files
from tensorpress.pipeline.gguf_mix import FLOAT_TYPES, PRESETS, mix_types
from tensorpress.pipeline.recipe import GGUFConfig

GGUF_FILE = "model.gguf"
STAGED_SUFFIX = ".weight_ggml"
_FLOAT_BY_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16"}


def export_gguf(
    folder: Path, hf_config: dict, source: Path, cfg: GGUFConfig, schemes: dict[str, QuantScheme]
) -> dict[str, str]:
    """Write folder/model.gguf from the staged shards in `folder` (then removed); tokenizer from `source`
    (a GGUF input keeps its own tokenizer metadata). Returns HF tensor name → stored type."""
    files = weight_files(folder)
    types: dict[str, str] = {}
    with SafetensorsReader(files) as reader:
        names = reader.names()
        shapes = {n: reader.kind(n)[1] for n in names}  # from the headers: nothing read twice
        outer = {
            n[: -len(".weight")]: shapes[n][1]
            for n in names
            if n.endswith(".weight") and _is_outer_matrix(n, shapes[n])
        }
        outer_types = mix_types(cfg.type, outer, hf_config, cfg.embeddings, cfg.pure)

        def tensors() -> Iterator[GGUFTensor]:
            for name in names:
                yield _gguf_tensor(name, reader.get(name), schemes, outer_types, types)

        write_gguf(
            folder / GGUF_FILE,
            hf_config,
            tokenizer_source=_tokenizer_source(source),
            tensors=tensors(),
            file_type=_file_type(cfg.type),
        )
    for f in files:
        f.unlink()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    return types


def _is_outer_matrix(name: str, shape: tuple[int, ...]) -> bool:
    """The token embedding or an untied output head (2-D weights outside the decoder layers)."""
    return len(shape) == 2 and ".layers." not in name and not name.endswith(STAGED_SUFFIX)


def _gguf_tensor(
    name: str, t: torch.Tensor, schemes: dict[str, QuantScheme], outer_types: dict[str, str], types: dict[str, str]
) -> GGUFTensor:
    if name.endswith(STAGED_SUFFIX):
        module = name[: -len(STAGED_SUFFIX)]
        scheme = schemes.get(module)
        if scheme is None or scheme.ggml is None:
            raise TensorpressError(f"internal: {module} has GGUF block bytes but no GGUF type")
        gt = ggml_type(scheme.ggml)
        raw = t.numpy()
        shape = (raw.shape[0], raw.shape[1] // gt.type_size * gt.block)
        types[module + ".weight"] = gt.name
        return GGUFTensor(module + ".weight", raw, gguf.GGMLQuantizationType(gt.ggml_id), shape)
    module = name.rpartition(".")[0]
    if t.ndim == 2 and module in outer_types and outer_types[module] not in FLOAT_TYPES:
        gt = ggml_type(outer_types[module])
        raw = quantize_rtn(gt, t.float()).to_bytes()
        types[name] = gt.name
        return GGUFTensor(name, raw, gguf.GGMLQuantizationType(gt.ggml_id), tuple(t.shape))
    if t.ndim == 2:
        kind = outer_types.get(module) or _FLOAT_BY_DTYPE.get(t.dtype, "F32")
    else:
        kind = "F32"  # norms and biases: llama.cpp computes them in F32
    types[name] = kind
    return GGUFTensor(name, t.float().numpy(), gguf.GGMLQuantizationType[kind], tuple(t.shape))


def _tokenizer_source(source: Path) -> Path | dict:
    """A GGUF input (dequantized once into the cache) keeps the tokenizer metadata of its file."""
    marker = source / "tensorpress-source.json"
    if marker.is_file():
        gguf_path = Path(json.loads(marker.read_text()).get("gguf", ""))
        if gguf_path.is_file():
            return copy_tokenizer_kv(gguf_path)
    return source


def _file_type(type_or_preset: str) -> int | None:
    """general.file_type: llama.cpp's name for the mix (MOSTLY_Q4_K_M, …)."""
    key = type_or_preset.upper()
    key = key if key in PRESETS else next((p for p, b in PRESETS.items() if b == key), key)
    member = getattr(gguf.LlamaFileType, f"MOSTLY_{key}", None)
    return int(member) if member is not None else None
