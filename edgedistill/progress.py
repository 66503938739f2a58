"""The one rich progress bar every long step uses (feature extraction, export, bench, training),
the training loop's step display (``StepProgress``), and the consoles every command prints through.

Bars go to stderr, so stdout stays clean for whoever pipes a command's output. Written to a
file, a pipe or a CI log, a console is ``LOG_WIDTH`` columns wide (rich would take 80 and cut
the tables' cells to ``tor…``), unless ``COLUMNS`` says otherwise.
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["progress_bar", "StepProgress", "stderr_console", "make_console", "print_table", "LOG_WIDTH"]

LOG_WIDTH = 100  # a log's lines; a wider table is printed in parts (``print_table``)


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


def print_table(console: Any, table: Any, keys: int = 1) -> None:
    """Print a rich ``table`` whole when it fits the console, else in parts that each fit: the
    first ``keys`` columns (what names a row) repeated in every part, the other columns spread
    over the parts in their order, so no cell is cut to ``onnx_…`` and no table line is wider
    than the console. The title heads the first part; a text caption follows the table, each
    of its lines unwrapped (a note is never broken mid-sentence in a log)."""
    unbounded = console.options.update_width(10_000)

    def width(columns: list[int]) -> int:  # the width the columns' cells ask for, uncut
        return console.measure(_table_part(table, columns, None), options=unbounded).maximum

    n = len(table.columns)
    key_columns, groups, current = list(range(keys)), [], []
    for i in range(keys, n):
        if current and width(key_columns + current + [i]) > console.width:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    for g, group in enumerate(groups):
        title = table.title if g == 0 else (f"{table.title} (continued)" if isinstance(table.title, str) else None)
        console.print(_table_part(table, key_columns + group, title))
    caption = table.caption
    for line in caption.splitlines() if isinstance(caption, str) else []:
        console.print(line, soft_wrap=True, highlight=False)
    if caption is not None and not isinstance(caption, str):
        console.print(caption)


def _table_part(table: Any, columns: list[int], title: Any) -> Any:
    """A copy of ``table`` with only ``columns`` (their settings, cells and the row styles)."""
    from rich.table import Table

    out = Table(title=title, title_justify=table.title_justify, box=table.box, show_header=table.show_header)
    for i in columns:
        c = table.columns[i]
        out.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap, style=c.style, header_style=c.header_style,
                       overflow=c.overflow)
    cells = [list(table.columns[i].cells) for i in columns]
    for r, row in enumerate(table.rows):
        out.add_row(*(column[r] for column in cells), style=row.style, end_section=row.end_section)
    return out


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


class StepProgress:
    """A training loop's progress: a rich bar with the latest metrics on an interactive terminal,
    plain "step N/total ETA" lines at most every 10 s otherwise (CI, pipes)."""

    def __init__(self, enabled: bool, console: Any, total: int, completed: int, name: str) -> None:
        self.enabled = enabled and console is not None
        self.console = console
        self.bar = None
        self.last_print = 0.0
        self.total = total
        self.started = time.perf_counter()
        self.first_step = completed
        if not self.enabled:
            return
        if console.is_terminal:
            self.bar = progress_bar(console, eta=True, info=True)
            self.bar.start()
            self.task_id = self.bar.add_task(name, total=total, completed=completed, info="")

    @staticmethod
    def _format(metrics: dict[str, float]) -> str:
        keys = [k for k in metrics if k not in ("img_s",)]
        text = " ".join(f"{k}={metrics[k]:.4g}" for k in keys)
        if "img_s" in metrics:
            text += f" {metrics['img_s']:.0f} img/s"
        return text

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task_id, completed=step, info=self._format(metrics))
            return
        now = time.perf_counter()
        if now - self.last_print >= 10 or step == self.total:
            self.last_print = now
            rate = (step - self.first_step) / max(now - self.started, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else math.inf
            eta_text = f"{eta:.0f}s" if math.isfinite(eta) else "?"
            self.console.print(f"step {step}/{self.total} ETA {eta_text} {self._format(metrics)}", highlight=False)

    def note(self, text: str) -> None:
        if self.enabled:
            (self.bar.console if self.bar is not None else self.console).print(text, highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
