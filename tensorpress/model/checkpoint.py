"""Resolve what the user named as MODEL into a validated safetensors checkpoint folder.

MODEL may be an HF folder, a `.gguf` file (converted once, cached) or a hub id (downloaded where the
network allows). Everything downstream streams tensors from the folder's shards one at a time.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tensorpress.errors import TensorpressError
from tensorpress.formats.safetensors_io import SafetensorsReader, check_index, weight_files
from tensorpress.infra.cache import cache_dir
from tensorpress.infra.inputs import check_regular, load_json_file
from tensorpress.model.validate import check_config_dict

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


@dataclass
class Checkpoint:
    """A checkpoint folder, its config and lazy access to its tensors."""

    spec: str
    folder: Path
    config_dict: dict
    reader: SafetensorsReader

    @property
    def files(self) -> list[Path]:
        return self.reader.files

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def tensor(self, name: str, check_finite: bool = True) -> torch.Tensor:
        """Read one tensor; NaN/Inf in a floating tensor is an error naming it."""
        t = self.reader.get(name)
        if check_finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TensorpressError(f"{self.reader.where[name]}: tensor {name} contains NaN or Inf values")
        return t

    def close(self) -> None:
        self.reader.close()


def resolve_folder(spec: str) -> Path:
    """MODEL spec → a local folder with config.json and safetensors weights."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        from tensorpress.formats.gguf import gguf_to_folder

        return gguf_to_folder(path, cache_dir())
    if path.is_dir():
        return path
    if path.exists():
        raise TensorpressError(f"model '{spec}': not a checkpoint folder or .gguf file")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return _download(spec)
    raise TensorpressError(f"model '{spec}': no such file or folder")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise TensorpressError(f"model '{repo_id}': hub download needs huggingface_hub") from e
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
            )
        )
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TensorpressError(f"model '{repo_id}': cannot download from the hub ({msg})") from e


def open_checkpoint(spec: str | Path) -> Checkpoint:
    """Resolve and validate: config present, weights present, every shard header intact."""
    spec = str(spec)
    folder = resolve_folder(spec)
    cfg_path = folder / "config.json"
    if not (cfg_path.exists() or cfg_path.is_symlink()):
        raise TensorpressError(f"model '{spec}': {folder} has no config.json")
    check_regular(cfg_path, "config")
    config_dict = check_config_dict(load_json_file(cfg_path, "config", 16 << 20), f"config '{cfg_path}'")
    files = weight_files(folder)
    if not files:
        bins = list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
        hint = " (only PyTorch .bin weights: re-save with safetensors)" if bins else ""
        raise TensorpressError(f"model '{spec}': {folder} has no safetensors weights{hint}")
    reader = SafetensorsReader(files)
    try:
        check_index(folder, reader)
    except TensorpressError:
        reader.close()
        raise
    return Checkpoint(spec, folder, config_dict, reader)


def recorded_base(spec: str) -> str | None:
    """The base checkpoint a tensorpress output records in its config.json (any output format)."""
    cfg = load_json_file(resolve_folder(spec) / "config.json", "config")
    entry = cfg.get("tensorpress") if isinstance(cfg, dict) else None
    base = entry.get("base") if isinstance(entry, dict) else None
    return base if isinstance(base, str) else None


def copy_side_files(src: Path, dest: Path) -> None:
    """Tokenizer, chat template and generation config travel with the weights."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
