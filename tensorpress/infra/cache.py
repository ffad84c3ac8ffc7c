"""Where tensorpress keeps what it fetches or converts once (sample model, texts, GGUF conversions)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$TENSORPRESS_CACHE`, else `$XDG_CACHE_HOME/tensorpress`, else `~/.cache/tensorpress`."""
    explicit = os.environ.get("TENSORPRESS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tensorpress"
