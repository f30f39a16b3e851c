"""Progress bars for ``Client.map(..., progress=True)`` and ``runner submit --progress``.

A bar (done of total, jobs a second, time left) is drawn with rich on stderr, and only when
stderr is a terminal: piped or captured output gets nothing extra, so scripts and logs
see exactly what they would without the flag.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    from rich.progress import Task

Item = TypeVar("Item")


def shown() -> bool:
    """Whether a bar would be drawn: stderr is a terminal."""
    return sys.stderr.isatty()


def track(items: Iterable[Item], total: int | None, description: str) -> Iterator[Item]:
    """Yield ``items`` unchanged, advancing a bar of ``total`` (None: unknown) as each passes."""
    if not shown():
        yield from items
        return
    bar = _bar()
    with bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _bar() -> Any:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Jobs a second, from rich's running estimate."""

        def render(self, task: "Task") -> Text:
            return Text("-- jobs/s" if task.speed is None else f"{task.speed:,.1f} jobs/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)


def size_of(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many calls ``map`` makes over ``iterables``: the shortest one's length, if all have one."""
    try:
        return min(len(iterable) for iterable in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
