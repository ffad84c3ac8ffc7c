"""GGUF input: dequantize once through transformers' GGUF support into a plain safetensors folder.

The pipeline only ever streams safetensors, so a GGUF file is converted a single time into the cache
(keyed by the file's path, size and mtime) and reused from there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from tensorpress.errors import TensorpressError


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def gguf_to_folder(path: Path, cache: Path, dtype: str = "bfloat16") -> Path:
    """Convert `path` (a .gguf file) to an HF folder with `dtype` safetensors + tokenizer; cached."""
    dest = cache / "gguf" / f"{path.stem}-{_key(path)}"
    if (dest / "config.json").is_file():
        return dest
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - dependency is declared
        raise TensorpressError(f"{path}: GGUF input needs transformers and gguf ({e})") from e
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise TensorpressError(f"{path}: GGUF input needs the 'gguf' package (pip install gguf)") from e
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as e:
        raise TensorpressError(f"{path}: cannot read GGUF file ({type(e).__name__}: {e})") from e
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = dtype
    config = type(model.config).from_dict(cfg)
    target = getattr(torch, dtype)
    # A fresh (non-GGUF) model object, so save_pretrained writes a plain checkpoint.
    plain = AutoModelForCausalLM.from_config(config, dtype=target)
    plain.load_state_dict({k: v.to(target) for k, v in model.state_dict().items()}, strict=False)
    plain.tie_weights()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "tensorpress-source.json").write_text(json.dumps({"gguf": str(path.resolve())}))
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
