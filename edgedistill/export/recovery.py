"""Accuracy-controlled INT8: when an INT8 variant misses the k-NN gate, its runtime keeps the
most sensitive layers in float and measures again, until the gate holds, the attempts are
spent or its time bound passes (``Runtime.recover``, each runtime its own way: ranking nodes
by output damage, or a quantizer's own accuracy control with our k-NN as the metric; a runtime
without one leaves the gate's verdict as it is).

A failed variant that no runtime can recover fails the export before any of this starts (the
long step would not change the verdict). Each step prints a line with the time spent and an
estimate of the time left. Either way the export's own accuracy gate judges the result, and
the manifest records which layers stayed in float and why (``quantization.accuracy_control``).
A gate that still fails exits 2 naming what was tried.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from edgedistill.export.gates import AccuracyGate
from edgedistill.export.plan import ExportPlan
from edgedistill.runtime import registry
from edgedistill.runtime.base import Build, Recovery, RecoveryRecord, RecoveryTimeout

__all__ = ["recover", "recoverable", "REPORT_EVERY"]

REPORT_EVERY = 10.0  # seconds between progress lines (the first and the last step always print)


def recoverable(plan: ExportPlan, build: Build, name: str) -> bool:
    """Whether accuracy control can try variant ``name`` at all."""
    found = registry.variant(name)
    return (found is not None and build.calibration_images is not None and int(plan.options.recovery_attempts) > 0
            and found[0].recovers(found[1]))


def recover(plan: ExportPlan, build: Build, gate: AccuracyGate, name: str, console: Any,
            deadline: float) -> RecoveryRecord | None:
    """Requantize variant ``name`` with float layers until ``gate`` passes it, the attempts are
    spent or ``deadline`` (``time.monotonic()``; the export's ``recovery_seconds``, for all its
    variants together) passes. Updates the built variant and the gate's figures; returns what
    was tried (also recorded in the variant's manifest entry), or None when its runtime cannot."""
    if not recoverable(plan, build, name):
        return None
    found = registry.variant(name)
    assert found is not None
    runtime, variant = found
    first = dict(gate.figures[name])
    bound = float(plan.options.recovery_seconds)
    started = time.monotonic()
    console.print(f"{name} lost {-first['knn_delta']:.2f} points of k-NN top-1 (max {gate.max_drop:g}): accuracy control "
                  f"keeps its most sensitive layers in float ({runtime.label}, at most {deadline - started:.0f} s)",
                  highlight=False)
    recovery = Recovery(check=lambda n: gate.check(build, n), max_drop=gate.max_drop,
                        calibration=build.calibration_images, attempts=int(plan.options.recovery_attempts),
                        bank=gate.bank, queries=gate.queries, num_classes=int(gate.common["num_classes"]),
                        deadline=deadline, progress=_reporter(console, name, started, deadline))
    try:
        tried = runtime.recover(variant, build, recovery)
    except RecoveryTimeout:
        tried = {"method": f"{runtime.label} accuracy control", "float_layers": [], "attempts": [],
                 "stopped": f"at the time bound of {bound:g} s (--recovery-seconds)"}
    if tried is None:
        return None
    record: RecoveryRecord = {"reason": f"k-NN top-1 dropped {-first['knn_delta']:.2f} points (> {gate.max_drop:g}) with every layer "
                        "quantized", "first_knn_delta": first["knn_delta"], **tried, "passed": bool(gate.figures[name]["passed"]),
                        "seconds": round(time.monotonic() - started, 1)}
    entry = build.entries[name]
    entry.quantization = {**(entry.quantization or {}), "accuracy_control": record}
    return record


def _reporter(console: Any, name: str, started: float, deadline: float) -> Callable[[int, int, str], None]:
    """Progress lines: step, what it found, time spent and left (at most until the deadline)."""
    last = [0.0]

    def report(done: int, total: int, note: str) -> None:
        now = time.monotonic()
        if last[0] and done < total and now - last[0] < REPORT_EVERY:
            return
        last[0] = now
        spent = now - started
        left = min(spent / max(done, 1) * max(total - done, 0), max(deadline - now, 0.0))
        console.print(f"  {name} accuracy control: step {done}/{total} (at most), {note}; {spent:.0f} s spent, "
                      f"ETA {left:.0f} s", highlight=False)

    return report
