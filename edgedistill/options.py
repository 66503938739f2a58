"""Parsing comma-separated option values (``--batch 1,8``, ``--precision fp32,int8``,
``--k 10,20``): one parser for every command, with one-line errors naming the option."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from edgedistill.errors import EdgeDistillError

__all__ = ["parse_list"]


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
