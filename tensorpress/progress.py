"""Progress reporting that the API accepts and the CLI renders (rich bars, or nothing)."""

from __future__ import annotations

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
    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            yield from bar.track(items, total=total, description=description)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)
