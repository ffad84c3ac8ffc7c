"""One writer per output folder: an advisory lock on a hidden sibling file.

`flock` rather than a PID file because the kernel drops the lock when its holder dies, even by kill -9,
so a crashed run never blocks the next one. The lock file is removed on release; a run that opened the
file just before it was removed notices (the path no longer names the file it locked) and tries again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tensorpress.errors import TensorpressError


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextmanager
def exclusive(target: Path, what: str = "--out") -> Iterator[None]:
    """Hold the lock of `target` (whose parent must exist) or fail at once naming the holder."""
    path = lock_path(target)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TensorpressError(
                f"{what} {target}: another tensorpress run (pid {holder}) is writing it; wait for it or choose "
                "another folder"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder we waited for removed the file: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
