"""Progress display of a build (rich), shown on a terminal or when asked for.

>>> with BuildProgress(enabled=False) as p:
...     with p.phase("import"):
...         pass
...     for _ in p.track(range(3), "tactics"):
...         pass
>>> [name for name, _ in p.times]
['import', 'tactics']
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rich.progress import Progress

T = TypeVar("T")


class BuildProgress:
    """Phases of a build with a spinner each, and a bar for per-layer work.

    ``enabled=None`` shows progress only when stderr is a terminal. Phase times are kept in
    ``times`` (seconds) whether or not anything is shown; the build records them.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.times: list[tuple[str, float]] = []
        self._progress: Progress | None = None

    def __enter__(self) -> BuildProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=False)
            progress.__enter__()
            self._progress = progress
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """One step of the build (import, optimize, memory plan, ...)."""
        progress = self._progress
        task = progress.add_task(name, total=1) if progress is not None else None
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times.append((name, time.perf_counter() - t0))
            if progress is not None and task is not None:
                progress.update(task, completed=1)

    def track(self, items: Iterable[T], name: str, total: int | None = None) -> Iterator[T]:
        """Iterates ``items`` with a progress bar (per-layer work such as tactic timing)."""
        if total is None and isinstance(items, Sized):
            total = len(items)
        progress = self._progress
        task = progress.add_task(name, total=total) if progress is not None else None
        t0 = time.perf_counter()
        for item in items:
            yield item
            if progress is not None and task is not None:
                progress.advance(task)
        self.times.append((name, time.perf_counter() - t0))
