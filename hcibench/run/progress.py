"""Progress reporting that training loops call without knowing whether anyone is watching."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Silent progress: the default for library use and tests."""

    def track(self, items: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
        yield from items

    def log(self, message: str) -> None:
        pass


class RichProgress(Progress):
    """Progress bars with ETA on a ``rich.progress.Progress`` display; one transient bar per loop."""

    def __init__(self, display, log_file=None):
        self.display = display
        self.log_file = log_file

    def track(self, items, total=None, description=""):
        if total is None and hasattr(items, "__len__"):
            total = len(items)
        task = self.display.add_task(f"  {description}", total=total)
        try:
            for item in items:
                yield item
                self.display.advance(task)
        finally:
            self.display.remove_task(task)

    def log(self, message: str) -> None:
        self.display.console.print(message)
        if self.log_file is not None:
            with open(self.log_file, "a") as handle:
                handle.write(message + "\n")
