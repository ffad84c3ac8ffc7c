"""Progress reporting that the API accepts and the CLI renders (rich bars, a plain log, or nothing)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Silent by default; the CLI passes a rich-backed subclass."""

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        yield from items

    def log(self, message: str) -> None:
        pass


class RichProgress(Progress):
    """One live display; nested `track` calls (runs → layers → windows) add bars to it."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._bar = None
        self._depth = 0

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        if self._bar is None:
            self._bar = Bars(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
        self._depth += 1
        task = self._bar.add_task(("  " * (self._depth - 1)) + description, total=total)
        try:
            for item in items:
                yield item
                self._bar.advance(task)
        finally:
            self._bar.remove_task(task)
            self._depth -= 1
            if self._depth == 0:
                self._bar.stop()
                self._bar = None

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)


class PlainProgress(Progress):
    """A line per event for logs that are not terminals (CI, `| tee`), on `stream` (stderr by default).

    A loop says when it starts and ends, and writes `i/N, elapsed, ETA` after an item when that item
    crossed a tenth of the loop or took a second or more since the last line: every layer of a real model
    (seconds each), ten lines for a fast loop of hundreds of windows."""

    def __init__(self, stream=None, min_interval: float = 1.0):
        self.stream = stream or sys.stderr
        self.min_interval = min_interval

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        t0 = last = time.perf_counter()
        self.log(f"{description}: start" + (f" (0/{total})" if total else ""))
        shown, done = 0, 0
        for item in items:
            yield item
            done += 1
            now = time.perf_counter()
            tenth = 10 * done // total if total else 0
            if total and (tenth > shown or now - last >= self.min_interval):
                shown, last = tenth, now
                eta = (now - t0) / done * (total - done)
                self.log(f"{description} {done}/{total}, {now - t0:.1f}s elapsed, ETA {eta:.1f}s")
        self.log(f"{description}: done {done}{f'/{total}' if total else ''} in {time.perf_counter() - t0:.1f}s")

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=self.stream, flush=True)


def auto_progress(quiet: bool = False) -> Progress:
    """Rich bars when both streams are terminals; otherwise plain lines on stdout; nothing when quiet.

    Plain lines go to stdout so that a log (`| tee`, CI) gets them and stderr keeps only errors: a failing
    run's stderr is its one error line whatever progress came before."""
    if quiet:
        return Progress()
    return RichProgress() if sys.stderr.isatty() and sys.stdout.isatty() else PlainProgress(sys.stdout)
