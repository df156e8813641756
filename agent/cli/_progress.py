"""One progress bar for the long commands (replay, export, reprice, demo).

Each shows the same columns on stderr, vanishes when done, and is off with
``--no-progress`` or when stderr is not a terminal (a pipe or a log gets no
bar codes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Bar:
    """What a running command reports to: a fraction done, a count, or a new description."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def __call__(self, fraction: float) -> None:
        self._progress.update(self._task, completed=fraction)

    def count(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def describe(self, text: str) -> None:
        self._progress.update(self._task, description=text)


@contextmanager
def progress(
    description: str,
    *,
    enabled: bool = True,
    console: Console | None = None,
    counted: bool = False,
) -> Iterator[Bar]:
    """A bar on ``console`` (stderr by default); ``counted`` shows "done/total" rows.

    A fraction bar runs to 1.0; a counted one has no total until the first
    ``count``. Off when not ``enabled`` (``--no-progress``) or not on a terminal.
    """
    console = console or Console(stderr=True)
    columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn()]
    if counted:
        columns.append(MofNCompleteColumn())
    columns.append(TimeElapsedColumn())
    with Progress(
        *columns,
        console=console,
        transient=True,
        disable=not enabled or not console.is_terminal,
    ) as bar:
        yield Bar(bar, bar.add_task(description, total=None if counted else 1.0))
