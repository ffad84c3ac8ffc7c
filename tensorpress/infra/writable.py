"""Where `--out` goes must be a real, writable folder: found out before any work, not after an hour.

`--out` under a regular file, inside /proc or /sys, or on a read-only file system used to fail at the
very end (or with a raw OSError). The nearest existing ancestor of the output is checked by creating
(and removing) an empty probe folder in it: the only test that answers for every file system.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tensorpress.errors import TensorpressError

VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")


def check_writable(dest: Path) -> None:
    """Refuse an output location that cannot hold a folder, naming the path at fault."""
    if str(dest) == "":
        raise TensorpressError("--out: empty path")
    target = Path(os.path.abspath(dest))
    anc = target.parent
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise TensorpressError(f"--out {dest}: {anc} is a file, not a folder")
    real = str(anc.resolve())
    if any(real == r or real.startswith(r + "/") for r in VIRTUAL_ROOTS):
        raise TensorpressError(f"--out {dest}: {real} is a virtual file system (/proc, /sys, /dev), not storage")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tensorpress-probe-", dir=anc))
    except OSError as e:
        raise TensorpressError(f"--out {dest}: cannot create a folder in {anc} ({e.strerror})") from e
