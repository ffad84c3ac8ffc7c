"""What `tensorpress inspect` shows: every tensor, every quantized module, the stored recipe."""

from __future__ import annotations

import json
from pathlib import Path

from tensorpress.errors import TensorpressError
from tensorpress.formats.compressed_tensors import check_packed, module_schemes, weight_shape
from tensorpress.formats.entropy import check_entry
from tensorpress.formats.entropy_table import TABLE_KEY, coded_info, coded_table
from tensorpress.formats.gguf_read import gguf_output, gguf_tensor_table
from tensorpress.formats.safetensors_io import SafetensorsReader, TensorInfo, check_index, read_header, weight_files
from tensorpress.formats.sizes import COUNTED_PARTS, size_stats
from tensorpress.formats.sparse import is_sparse
from tensorpress.infra.inputs import load_json_file


def inspect_path(path: str | Path) -> dict:
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return _inspect_gguf(p.parent, {"file": p.name}, {}, p)
    entry = gguf_output(p) if p.is_dir() else None
    if entry is not None:
        return _inspect_gguf(p, entry, json.loads((p / "config.json").read_text()), p)
    if p.is_file() and p.suffix == ".safetensors":
        files, folder = [p], None
    elif p.is_dir():
        files, folder = weight_files(p), p
        if not files:
            raise TensorpressError(f"{p}: no safetensors files")
    else:
        raise TensorpressError(f"{path}: no such folder or .safetensors file")
    infos: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    coded: dict[str, dict] = {}
    for f in files:
        i, m = read_header(f)
        infos.update(i)
        coded.update(coded_table(m, str(f)))
        metadata.update(m)
    metadata.pop(TABLE_KEY, None)
    config = {}
    cfg_path = folder / "config.json" if folder is not None else None
    if cfg_path is not None and (cfg_path.exists() or cfg_path.is_symlink()):
        config = load_json_file(cfg_path, "config", 16 << 20)
        if not isinstance(config, dict):
            raise TensorpressError(f"config '{cfg_path}': must be a JSON object")
    recipe = (config.get("tensorpress") or {}).get("recipe")
    if recipe is None and "tensorpress" in metadata:
        recipe = json.loads(metadata["tensorpress"]).get("recipe")
    tensors = [
        {"name": n, "dtype": i.dtype, "shape": list(i.shape), "bytes": i.nbytes} | coded_info(coded.get(n), i.nbytes)
        for n, i in sorted(infos.items())
    ]
    quantized = []
    with SafetensorsReader(files) as r:
        if folder is not None:
            check_index(folder, r)
        for name, entry in coded.items():
            check_entry(name, entry, infos[name].nbytes)
        packed = sorted(n[: -len(".weight_packed")] for n in infos if n.endswith(".weight_packed"))
        _check_schemes(packed, config, cfg_path, r)
        schemes = _schemes(config)
        for name in packed:
            out_f, in_f = weight_shape(name, r.kind, r.get)
            nbytes = sum(infos[f"{name}.{s}"].nbytes for s in COUNTED_PARTS if f"{name}.{s}" in infos)
            quantized.append(
                {
                    "name": name,
                    "scheme": schemes.get(name, "?"),
                    "weights": out_f * in_f,
                    "bytes": nbytes,
                    "bits_per_weight": 8 * nbytes / (out_f * in_f),
                }
            )
    stats = size_stats(folder) if folder is not None else None
    qbytes = sum(q["bytes"] for q in quantized)
    qweights = sum(q["weights"] for q in quantized)
    summary = {
        "tensors": len(tensors),
        "size_bytes": stats["size_bytes"] if stats else p.stat().st_size,
        "quantized_modules": len(quantized),
        "bits_per_weight": 8 * qbytes / qweights if qweights else None,
    }
    if coded:
        raw = sum(t["raw_bytes"] for t in tensors if "raw_bytes" in t)
        done = sum(t["bytes"] for t in tensors if "raw_bytes" in t)
        summary["entropy"] = {"coded_tensors": len(coded), "raw_bytes": raw, "coded_bytes": done, "ratio": done / raw}
    return {
        "path": str(p),
        "summary": summary,
        "recipe": recipe,
        "tensors": tensors,
        "quantized": quantized,
        "metadata": {k: v for k, v in metadata.items() if k != "tensorpress"},
    }


def _inspect_gguf(folder: Path, entry: dict, config: dict, shown: Path) -> dict:
    """A GGUF file (a tensorpress output or any other): its tensors with their llama.cpp block types."""
    rows = gguf_tensor_table(folder, entry)
    hf_names = {}
    if config:
        from tensorpress.formats.gguf_names import gguf_tensor_name, resolve_gguf_arch

        arch = resolve_gguf_arch(str(config.get("model_type")))
        n_layers = int(config["num_hidden_layers"])
        hf_names = {gguf_tensor_name(n, arch, n_layers): n for n in entry.get("tensors", {})}
    tensors = [{"name": r["gguf_name"], "dtype": r["type"], "shape": r["shape"], "bytes": r["bytes"]} for r in rows]
    quantized = []
    for r in rows:
        if r["type"] in ("F32", "F16", "BF16") or r["gguf_name"] == "token_embd.weight":
            continue
        n = 1
        for d in r["shape"]:
            n *= d
        name = hf_names.get(r["gguf_name"], r["gguf_name"])
        quantized.append(
            {
                "name": name,
                "scheme": r["type"],
                "weights": n,
                "bytes": r["bytes"],
                "bits_per_weight": 8 * r["bytes"] / n,
            }
        )
    qbytes = sum(q["bytes"] for q in quantized)
    qweights = sum(q["weights"] for q in quantized)
    summary = {
        "tensors": len(tensors),
        "size_bytes": (folder / entry.get("file", "model.gguf")).stat().st_size,
        "quantized_modules": len(quantized),
        "bits_per_weight": 8 * qbytes / qweights if qweights else None,
    }
    recipe = (config.get("tensorpress") or {}).get("recipe") if config else None
    return {
        "path": str(shown),
        "summary": summary,
        "recipe": recipe,
        "tensors": tensors,
        "quantized": quantized,
        "metadata": {},
    }


def _check_schemes(packed: list[str], config: dict, cfg_path: Path | None, r: SafetensorsReader) -> None:
    """Each packed module's tensors against its quantization_config scheme (when there is a config)."""
    if not packed or cfg_path is None or not config:
        return
    qconfig = config.get("quantization_config")
    if not qconfig:
        raise TensorpressError(f"{cfg_path}: no quantization_config, but {packed[0]}.weight_packed is stored")
    schemes = module_schemes(qconfig, {n: "Linear" for n in packed})
    names = set(r.names())
    for name in packed:
        if name not in schemes:
            raise TensorpressError(f"{cfg_path}: {name} is packed but no quantization_config group targets it")
        out_f, in_f = weight_shape(name, r.kind, r.get)
        check_packed(name, schemes[name], r.kind, out_f, in_f, sparse=is_sparse(name, names))


def _schemes(config: dict) -> dict[str, str]:
    out = {}
    for group in ((config.get("quantization_config") or {}).get("config_groups") or {}).values():
        w = group.get("weights") or {}
        gs = w.get("group_size")
        desc = f"int{w.get('num_bits')} {'sym' if w.get('symmetric') else 'asym'} " + (
            f"g{gs}" if gs else "per-channel"
        )
        for t in group.get("targets", []):
            out[t] = desc
    return out
