"""The k-NN difference every figure uses, and the rule that picks the variant to ship.

``knn_delta``: a variant's k-NN top-1 minus torch FP32's, in points; positive means better than
torch. Export JSON and manifest, bench JSON and CSV and every table carry it under that name.

The rule (export/README.md, "Which variant to ship"), applied per target (a runtime family):

1. Candidates: every variant (FP32, FP16, every INT8) whose ``knn_delta`` is within the accuracy
   gate (``>= -max_drop``). Where no candidate has a k-NN figure (no labeled data at export), the
   FP32 variants, which the parity gate holds to torch's outputs.
2. The fastest candidate (p50 at batch 1: bench's figure, else the export's quick timing) wins.
3. Timings within :data:`SPEED_TIE` of the fastest are a tie, which accuracy breaks only by more
   than the validation set's resolution (one standard error of the top-1 on its images,
   :func:`resolution`): the choice never flips on a handful of validation images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["SPEED_TIE", "Candidate", "Choice", "knn_delta", "delta_of", "resolution", "recommend", "recommend_line"]

SPEED_TIE = 0.05  # relative p50 difference below which two timings count as equal (timing noise)


def knn_delta(top1: float, reference_top1: float) -> float:
    """A variant's top-1 minus the reference's (torch FP32), in points; positive: better."""
    return round(float(top1) - float(reference_top1), 6)


def delta_of(figures: dict[str, Any]) -> float | None:
    """``knn_delta`` of a variant's gate figures; from ``drop`` (torch minus the variant) in a
    bundle written before ``knn_delta`` existed."""
    if figures.get("knn_delta") is not None:
        return float(figures["knn_delta"])
    return -float(figures["drop"]) if figures.get("drop") is not None else None


def resolution(top1: float | None, images: int | None) -> float:
    """One standard error of a top-1 of ``top1`` % on ``images`` validation images, in points
    (0 when unknown): k-NN differences below it are noise of the validation set."""
    if top1 is None or not images:
        return 0.0
    p = min(max(float(top1) / 100.0, 0.0), 1.0)
    return round(100.0 * math.sqrt(p * (1.0 - p) / int(images)), 2)


@dataclass(frozen=True)
class Candidate:
    """One way to run a variant: its target (runtime family), precision label, batch-1 p50
    (None: not timed), k-NN top-1 and ``knn_delta`` (None: no accuracy figure)."""

    target: str
    variant: str
    precision: str
    ms: float | None
    top1: float | None = None
    knn_delta: float | None = None
    fp32: bool = False  # an FP32 variant: the parity gate holds it to torch's outputs
    key: str = ""  # the caller's id for it (a bench row id)


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    reason: str


def _ms(c: Candidate) -> float:
    return c.ms if c.ms is not None else math.inf


def _validated(c: Candidate, max_drop: float) -> bool:
    return c.knn_delta is not None and c.knn_delta >= -max_drop


def recommend(candidates: Iterable[Candidate], max_drop: float, noise: float = 0.0,
              timing: str = "p50", batch: int = 1) -> dict[str, Choice]:
    """The variant to ship per target by the rule of this module (targets in first-seen
    order); ``noise``: the validation set's :func:`resolution`; ``timing`` names where the
    speed figures (at ``batch``) come from, for the reason."""
    by_target: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_target.setdefault(c.target, []).append(c)
    out = {}
    for target, mine in by_target.items():
        why = ""
        timed = [c for c in mine if c.ms is not None]
        pool = [c for c in timed if _validated(c, max_drop)]
        if pool:
            why = f"the fastest within the {max_drop:g}-point k-NN gate of torch FP32"
        elif not any(c.knn_delta is not None for c in mine):
            pool = [c for c in timed if c.fp32]
            why = "the fastest FP32 variant (no k-NN figures: FP32 is held to torch by the parity gate)"
        if not pool:
            continue
        fastest = min(pool, key=_ms)
        tied = [c for c in pool if _ms(c) <= _ms(fastest) * (1 + SPEED_TIE)]
        best = max(tied, key=lambda c: c.knn_delta if c.knn_delta is not None else -math.inf)
        if best is not fastest and (best.knn_delta or 0.0) - (fastest.knn_delta or 0.0) > noise:
            why = (f"as fast as {fastest.variant} (within {SPEED_TIE:.0%}) and more accurate by more than the "
                   f"validation set's resolution ({noise:.2f} points)")
        else:
            best = fastest
        runner_up = sorted((c for c in pool if c is not best), key=_ms)
        beats = ""
        if runner_up:
            nxt = runner_up[0]
            same = nxt.variant == best.variant  # the same file under another setting: say which
            beats = f"; next {nxt.variant}{f' ({nxt.precision})' if same else ''} {_ms(nxt):.3g} ms"
        out[target] = Choice(best, f"{why} ({timing} {_ms(best):.3g} ms at batch {batch}{beats})")
    return out


def recommend_line(choice: Choice, target_label: str) -> str:
    """``Recommended for <target>: <variant> (<precision>), k-NN ... : <why>`` (one line)."""
    c = choice.candidate
    knn = ("no k-NN figure" if c.top1 is None else
           f"k-NN top-1 {c.top1:.2f}, knn_delta {c.knn_delta:+.2f}" if c.knn_delta is not None else
           f"k-NN top-1 {c.top1:.2f}")
    return f"Recommended for {target_label}: {c.variant} ({c.precision}; {knn}): {choice.reason}"
