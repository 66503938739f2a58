"""The one rich progress bar every long step uses (feature extraction, export, bench, training),
and the consoles every command prints through.

Bars go to stderr, so stdout stays clean for whoever pipes a command's output. Written to a
file, a pipe or a CI log, a console is ``LOG_WIDTH`` columns wide (rich would take 80 and cut
the tables' cells to ``tor…``), unless ``COLUMNS`` says otherwise.
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar", "stderr_console", "make_console", "LOG_WIDTH"]

LOG_WIDTH = 200  # wide enough for the bench table with three batch sizes


def make_console(stderr: bool = True, quiet: bool = False) -> Any:
    """A rich console on stderr (progress, messages) or stdout (results): the terminal's width
    on a terminal, ``COLUMNS`` when set, else ``LOG_WIDTH``."""
    import os
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    width = None if terminal or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(stderr=stderr, quiet=quiet, width=width)


def stderr_console(quiet: bool = False) -> Any:
    return make_console(stderr=True, quiet=quiet)


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
