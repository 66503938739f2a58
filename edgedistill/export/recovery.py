"""Accuracy-controlled INT8: when an INT8 variant misses the k-NN gate, keep its most
sensitive layers in float and measure again, until the gate holds or the budget runs out.

* ONNX Runtime: each quantizable node is quantized alone and ranked by how far that moves the
  output from FP32 (cosine on calibration images); then the 1, 2, 4, ... most sensitive nodes
  stay in float (``nodes_to_exclude``) until the k-NN gate passes.
* OpenVINO: NNCF's ``quantize_with_accuracy_control`` with our k-NN top-1 as its validation
  metric; NNCF ranks the quantized operations itself and reverts them one by one.

Either way the export's own accuracy gate judges the result, and the manifest records which
layers stayed in float and why (``quantization.accuracy_control``). A gate that still fails
exits 2 naming what was tried.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgedistill.export.gates import AccuracyGate, compare
from edgedistill.export.plan import ExportPlan
from edgedistill.export.variants import Built

__all__ = ["recover", "RECOVERABLE"]

RECOVERABLE = ("onnx_int8", "onnx_fused_int8", "openvino_int8")
RANKING_IMAGES = 8


def recover(plan: ExportPlan, built: Built, gate: AccuracyGate, name: str, calib: np.ndarray,
            attempts: int) -> dict[str, Any]:
    """Requantize variant ``name`` with float layers until ``gate`` passes it or ``attempts``
    measurements are spent. Updates the built variant and the gate's figures; returns what was
    tried (also recorded in the variant's manifest entry)."""
    first = dict(gate.figures[name])
    tried = (_recover_onnx if built.entries[name]["format"] == "onnx" else _recover_openvino)(plan, built, gate, name, calib, attempts)
    record = {"reason": f"k-NN top-1 dropped {first['drop']:.2f} points (> {gate.max_drop:g}) with every layer "
                        "quantized", "first_drop": first["drop"], **tried, "passed": bool(gate.figures[name]["passed"])}
    built.entries[name].setdefault("quantization", {})["accuracy_control"] = record
    return record


# ----------------------------------------------------------------------------- ONNX Runtime


def _quantizable_nodes(path: Any) -> list[str]:
    import onnx

    from edgedistill.export.quantize import ORT_INT8

    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    # the nodes the quantizer turns into INT8: the recipe's op types with a constant weight input
    return [n.name for n in graph.node if n.op_type in ORT_INT8["op_types"] and any(i in weights for i in n.input)]


def _ort_sensitivity(plan: ExportPlan, built: Built, source: Any, nodes: list[str], images: np.ndarray,
                     reference: np.ndarray) -> dict[str, float]:
    """1 - cosine to FP32 when only that node is quantized."""
    from edgedistill.export.quantize import quantize_ort_int8
    from edgedistill.runtime.embedders import OnnxEmbedder

    damage = {}
    probe = built.work / ".sensitivity.onnx"
    for node in nodes:
        quantize_ort_int8(source, probe, images, calib_method=plan.options["calib_method"],
                          exclude=[n for n in nodes if n != node])
        damage[node] = 1.0 - compare(reference, OnnxEmbedder(probe, threads=plan.options["threads"]).embed(images))[
            "min_cosine"]
    probe.unlink(missing_ok=True)
    return damage


def _recover_onnx(plan: ExportPlan, built: Built, gate: AccuracyGate, name: str, calib: np.ndarray,
                  attempts: int) -> dict[str, Any]:
    import torch

    from edgedistill.export.quantize import quantize_ort_int8

    images = calib[:RANKING_IMAGES]
    with torch.inference_mode():
        reference = plan.graph(torch.from_numpy(images))
        reference = (reference[0] if isinstance(reference, tuple) else reference).numpy()
    source_name = built.entries[name]["quantization"].get("source_graph")
    source = built.files[source_name] if source_name in built.files else built.onnx_fp32
    nodes = _quantizable_nodes(source)
    damage = _ort_sensitivity(plan, built, source, nodes, images, reference)
    ranked = sorted(nodes, key=lambda n: -damage[n])
    steps, excluded = [], 0
    while len(steps) < attempts and excluded < len(ranked):
        excluded = min(len(ranked), max(1, 2 * excluded))
        float_nodes = ranked[:excluded]
        settings = quantize_ort_int8(source, built.files[name], calib, calib_method=plan.options["calib_method"],
                                     exclude=float_nodes)
        built.entries[name]["quantization"].update(settings)
        gate.check(built, name)
        steps.append({"float_nodes": len(float_nodes), "top1": gate.figures[name]["top1"],
                      "drop": gate.figures[name]["drop"]})
        if gate.figures[name]["passed"]:
            break
    return {"method": "per-node sensitivity (output cosine, quantized alone), most sensitive kept in float",
            "float_layers": ranked[:excluded], "sensitivity": {n: round(damage[n], 6) for n in ranked[:excluded]},
            "attempts": steps}


# ----------------------------------------------------------------------------- OpenVINO


def _recover_openvino(plan: ExportPlan, built: Built, gate: AccuracyGate, name: str, calib: np.ndarray,
                      attempts: int) -> dict[str, Any]:
    from edgedistill.export.openvino import quantize_openvino_controlled

    settings = quantize_openvino_controlled(built.files["openvino_fp32"], built.files[name], calib,
                                            _validation(gate), max_drop=gate.max_drop, max_layers=attempts * 4)
    built.entries[name]["quantization"].update({k: v for k, v in settings.items() if k != "float_layers"})
    gate.check(built, name)
    return {"method": "nncf.quantize_with_accuracy_control, k-NN top-1 as the metric",
            "float_layers": settings["float_layers"],
            "attempts": [{"float_nodes": len(settings["float_layers"]), "top1": gate.figures[name]["top1"],
                          "drop": gate.figures[name]["drop"]}]}


def _validation(gate: AccuracyGate) -> tuple[list[Any], Any]:
    """NNCF's validation set (the k-NN queries, as (input, label) items) and its metric: the
    k-NN top-1 of a compiled model, with the bank embedded by that same model."""
    from edgedistill.eval.features import knn_classify

    queries = [gate.queries[i] for i in range(len(gate.queries))]
    bank = [gate.bank[i] for i in range(len(gate.bank))]

    def embed(compiled: Any, items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        output = compiled.outputs[0]
        feats = [np.asarray(compiled(np.ascontiguousarray(x[None], np.float32))[output]) for x, _ in items]
        return np.concatenate(feats), np.asarray([y for _, y in items])

    def metric(compiled: Any, items: Any) -> tuple[float, None]:
        bank_f, bank_y = embed(compiled, bank)
        query_f, query_y = embed(compiled, list(items))
        result = knn_classify(bank_f, bank_y, query_f, gate.common["num_classes"], ks=(20,), val_labels=query_y)
        return float(result["top1"]), None

    return queries, metric
