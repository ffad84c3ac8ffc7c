"""Where an output may go, and what `--force` may replace: one set of rules for every command that writes.

- An output must not be, contain or lie inside any of the run's inputs (model folder or file, `--base`,
  recipe and text files, matrix, shard folders): writing there would replace or pollute what is being
  read. Refused before any work, with or without `--force`.
- Every output folder carries `.tensorpress-output` (a small JSON). `--force` replaces a folder with that
  marker, or an empty one; an arbitrary non-empty folder is never replaced.
- One writer at a time (`locks.exclusive`), leftovers of killed runs cleaned first (`atomic.clean_stale`),
  the new tree built aside and swapped in whole (`atomic.atomic_dir`).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tensorpress.errors import TensorpressError
from tensorpress.infra.atomic import atomic_dir, clean_stale
from tensorpress.infra.locks import exclusive
from tensorpress.version import __version__

MARKER = ".tensorpress-output"
# errnos that mean "the output could not be written", as opposed to an input that could not be read
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM)


def input_paths(*specs: str | Path | None) -> list[Path]:
    """The specs that name existing files or folders (hub ids, `kjv:eval` and the like are not paths)."""
    out = []
    for s in specs:
        if s is None or (isinstance(s, str) and not s.strip()):
            continue
        p = Path(s).expanduser()
        if os.path.lexists(p):
            out.append(p)
    return out


def check_apart(out: Path, inputs: Iterable[Path], what: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside an input (symlinks resolved)."""
    o = Path(out).expanduser().resolve()
    for inp in inputs:
        i = Path(inp).expanduser().resolve()
        if o == i:
            rel = "is"
        elif i in o.parents:
            rel = "lies inside"
        elif o in i.parents:
            rel = "contains"
        else:
            continue
        raise TensorpressError(f"{what} {out}: {rel} the input {inp}; write the output somewhere else")


def read_marker(folder: Path) -> dict | None:
    """The marker of a tensorpress output folder, else None."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "tensorpress" else None


def write_marker(folder: Path, kind: str) -> None:
    text = json.dumps({"written_by": "tensorpress", "kind": kind, "version": __version__}) + "\n"
    (folder / MARKER).write_text(text, encoding="utf-8")


def check_replaceable(out: Path, force: bool, what: str = "--out", resume: str | None = None) -> None:
    """Refuse a file, a non-empty folder without --force, and any non-empty folder tensorpress did not write.

    `resume`: an output of that kind may be continued in place without --force (a batch)."""
    if os.path.lexists(out) and not out.is_dir():
        raise TensorpressError(f"{what} {out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = read_marker(out)
    if marker is None:
        raise TensorpressError(
            f"{what} {out}: exists, is not empty and was not written by tensorpress (no {MARKER}); --force "
            "replaces only tensorpress outputs: remove it yourself or choose another folder"
        )
    if not force and not (resume and marker.get("kind") == resume):
        raise TensorpressError(
            f"{what} {out}: exists (a tensorpress {marker.get('kind', '')} output); use --force to replace it"
        )


class OutputClaim:
    """The right to (re)write one output folder, held from the checks until the new tree is in place.

    with OutputClaim(out, "compress", force, input_paths(model, recipe)) as claim:
        ...resolve inputs...; claim.check_apart([resolved_folder])
        with claim.build() as tmp:
            ...write into tmp...
    """

    def __init__(
        self,
        out: str | Path,
        kind: str,
        force: bool,
        inputs: Iterable[Path],
        what: str = "--out",
        resume: bool = False,
    ):
        self.out = Path(out)
        self.kind = kind
        self.force = force
        self.what = what
        self.resume = resume
        self._stack = ExitStack()
        check_apart(self.out, inputs, what)

    def __enter__(self) -> OutputClaim:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TensorpressError(f"{self.what} {self.out}: cannot create its parent folder ({e.strerror})") from e
        self._stack.enter_context(exclusive(self.out, self.what))
        try:
            clean_stale(self.out)
            check_replaceable(self.out, self.force, self.what, self.kind if self.resume else None)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def check_apart(self, inputs: Iterable[Path]) -> None:
        """Inputs only known after resolving (a hub download, a dequantized .gguf) are checked too."""
        check_apart(self.out, inputs, self.what)

    @contextmanager
    def build(self) -> Iterator[Path]:
        """A temporary folder that becomes `out` (with the marker) when the block succeeds."""
        try:
            with atomic_dir(self.out) as tmp:
                yield tmp
                write_marker(tmp, self.kind)
        except OSError as e:
            if e.errno not in _WRITE_ERRNOS:
                raise
            raise TensorpressError(f"{self.what} {self.out}: cannot write ({e.strerror}); nothing was replaced") from e
