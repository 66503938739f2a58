"""Comma-separated option values (``--batch 1,8``, ``--precision fp32,int8``, ``--k 10,20``):
one parser for every command and API (:func:`parse_list`), and the click type the CLI's
options declare (:class:`CommaList`), with one-line errors naming the option."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import click

from edgedistill.errors import EdgeDistillError

__all__ = ["parse_list", "CommaList"]


def _parse_one(text: str, name: str, kind: type, choices: Sequence[str] | None, minimum: float | None,
               noun: str | None) -> Any:
    if kind in (int, float):
        try:
            value: Any = kind(text)
        except ValueError:
            noun = "integers" if kind is int else "numbers"
            raise EdgeDistillError(f"--{name} takes comma-separated {noun}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise EdgeDistillError(f"--{name} takes finite numbers, got {text!r}")
        if minimum is not None and value < minimum:
            raise EdgeDistillError(f"--{name} values must be >= {minimum:g}, got {value:g}")
        return value
    value = text.lower()
    if choices is not None and value not in choices:
        what = f"{noun} {text}" if noun else f"--{name} value {text!r}"
        raise EdgeDistillError(f"unknown {what}: choose from {', '.join(choices)} (comma-separated)")
    return value


def parse_list(value: str | Iterable[Any] | None, name: str, kind: type = str,
               choices: Sequence[str] | None = None, minimum: float | None = 1,
               noun: str | None = None) -> list[Any] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]``: checked, deduplicated, in order; ``None`` stays ``None``.

    ``kind`` is ``str`` (lower-cased, one of ``choices`` when given), ``int`` or ``float``
    (at least ``minimum``; ``None``: no bound). An empty list is an error; ``noun`` names an
    unknown choice in the message ("unknown export format xyz").
    """
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[Any] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        parsed = _parse_one(text, name, kind, choices, minimum, noun)
        if parsed not in out:
            out.append(parsed)
    if not out:
        raise EdgeDistillError(f"--{name} is empty")
    return out


class CommaList(click.ParamType):
    """``--batch 1,8`` as ``[1, 8]``: :func:`parse_list`'s parsing and checks at the command
    line. An error is an EdgeDistillError (the CLI prints it as one line and exits 2), not
    click's usage screen. ``choices`` may be a callable, resolved when a value is parsed (the
    registry's names, without importing it for ``--help``)."""

    name = "list"

    def __init__(self, kind: type = str, choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
                 minimum: float | None = 1, noun: str | None = None) -> None:
        self.kind, self.choices, self.minimum, self.noun = kind, choices, minimum, noun

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[Any]:
        if isinstance(value, list):
            return value
        option = (param.opts[0] if param is not None and param.opts else "--value").lstrip("-")
        choices = self.choices() if callable(self.choices) else self.choices
        return parse_list(value, option, kind=self.kind, choices=choices, minimum=self.minimum, noun=self.noun) or []
