"""The one rich progress bar every long step uses (feature extraction, export, bench, training).

Bars go to stderr, so stdout stays clean for whoever pipes a command's output.
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar", "stderr_console"]


def stderr_console(quiet: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=True, quiet=quiet)


def progress_bar(console: Any = None, *, enabled: bool = True, rate: str | None = None, eta: bool = False,
                 info: bool = False) -> Any:
    """A ``rich.progress.Progress``: description, bar, done/total, elapsed; with ``rate`` a
    ``{task.fields[rate]}`` column (pass ``rate=...`` to ``add_task``/``update``), with ``eta``
    the remaining time, with ``info`` a free ``{task.fields[info]}`` column."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if rate is not None:
        columns.append(TextColumn("{task.fields[rate]}"))
    columns.append(TimeElapsedColumn())
    if eta:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=console if console is not None else stderr_console(),
                    disable=not enabled, transient=False)
