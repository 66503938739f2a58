"""Accuracy-controlled INT8: when an INT8 variant misses the k-NN gate, its runtime keeps the
most sensitive layers in float and measures again, until the gate holds or the budget runs
out (``Runtime.recover``, each runtime its own way: ranking nodes by output damage, or a
quantizer's own accuracy control with our k-NN as the metric; a runtime without one leaves
the gate's verdict as it is).

Either way the export's own accuracy gate judges the result, and the manifest records which
layers stayed in float and why (``quantization.accuracy_control``). A gate that still fails
exits 2 naming what was tried.
"""

from __future__ import annotations


from edgedistill.export.gates import AccuracyGate
from edgedistill.export.plan import ExportPlan
from edgedistill.runtime import registry
from edgedistill.runtime.base import Build, Recovery, RecoveryRecord

__all__ = ["recover"]


def recover(plan: ExportPlan, build: Build, gate: AccuracyGate, name: str) -> RecoveryRecord | None:
    """Requantize variant ``name`` with float layers until ``gate`` passes it or the attempts
    are spent. Updates the built variant and the gate's figures; returns what was tried (also
    recorded in the variant's manifest entry), or None when its runtime cannot."""
    found = registry.variant(name)
    if found is None or build.calibration_images is None:
        return None
    runtime, variant = found
    first = dict(gate.figures[name])
    recovery = Recovery(check=lambda n: gate.check(build, n), max_drop=gate.max_drop,
                        calibration=build.calibration_images, attempts=int(plan.options.recovery_attempts),
                        bank=gate.bank, queries=gate.queries,
                        num_classes=int(gate.common["num_classes"]))
    tried = runtime.recover(variant, build, recovery)
    if tried is None:
        return None
    record: RecoveryRecord = {"reason": f"k-NN top-1 dropped {-first['knn_delta']:.2f} points (> {gate.max_drop:g}) with every layer "
                        "quantized", "first_knn_delta": first["knn_delta"], **tried, "passed": bool(gate.figures[name]["passed"])}
    entry = build.entries[name]
    entry.quantization = {**(entry.quantization or {}), "accuracy_control": record}
    return record
