"""Outputs appear whole or not at all: build in a hidden sibling folder, then swap it into place.

    DEST's parent/
      .DEST.partial-XXXX/   the new output while it is written (removed on failure)
      DEST/                 the earlier output, untouched until the swap

The swap is one `renameat2(RENAME_EXCHANGE)` on Linux: DEST names the old tree or the new one, never
neither; the old tree is then deleted under the temporary name. Where the exchange is not available, the
old tree is renamed to `.DEST.old-PID` first. A run killed at any moment leaves `.DEST.partial-*` or
`.DEST.old-*` folders; `clean_stale` (called by the next run, under the output's lock) removes them, and
puts an aside old tree back if DEST itself is missing.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = "partial"
ASIDE = "old"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _kill_point(name: str) -> None:
    """Crash tests: `TENSORPRESS_TEST_KILL_AT=name` SIGKILLs this process at that exact moment of a swap."""
    if os.environ.get("TENSORPRESS_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def leftovers(dest: Path, kind: str) -> list[Path]:
    """Temporary (`partial`) or set-aside (`old`) folders of `dest` left by earlier runs."""
    return sorted(Path(p) for p in glob.glob(str(dest.parent / f".{glob.escape(dest.name)}.{kind}-*")))


def clean_stale(dest: Path) -> None:
    """Remove what a killed run left next to `dest`; restore an aside old output when `dest` is missing.

    Only safe while holding `dest`'s lock: a live run's temporary folder looks just like a stale one."""
    aside = leftovers(dest, ASIDE)
    if aside and not os.path.lexists(dest):
        aside.pop().rename(dest)  # killed between the two renames of the fallback swap
    for p in aside + leftovers(dest, PARTIAL):
        shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ≥ 3.15, glibc ≥ 2.28); False where unsupported."""
    if os.environ.get("TENSORPRESS_TEST_NO_EXCHANGE") == "1":  # crash tests of the fallback swap
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    """Data and directory entries on disk before the swap, so a power cut cannot expose a hollow output."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def swap_into_place(tmp: Path, dest: Path) -> None:
    """Make the complete tree `tmp` be `dest`; an existing `dest` is replaced and then deleted."""
    _fsync_tree(tmp)
    _kill_point("before-swap")
    if not os.path.lexists(dest):
        tmp.rename(dest)
        return
    if _exchange(tmp, dest):
        _kill_point("after-swap")
        shutil.rmtree(tmp, ignore_errors=True)  # now the old tree
        return
    old = dest.parent / f".{dest.name}.{ASIDE}-{os.getpid()}"
    dest.rename(old)
    _kill_point("between-renames")
    try:
        tmp.rename(dest)
    except BaseException:
        old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `dest`, on any failure it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{PARTIAL}-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like any folder
    try:
        yield tmp
        swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
