"""ONNX Runtime's bundle variants: the plain FP32 graph (standard operators, every ONNX runtime
loads it), the fused-attention graph (:mod:`.fused`, ONNX Runtime only), and the INT8 of
each (:mod:`.quantize`); accuracy control for the INT8 ones (docs/design.md §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.runtime.base import Build, Recovery, RecoveryRecord

__all__ = ["build_variant", "recover", "ORT_ONLY"]

ORT_ONLY = ("onnxruntime",)  # contrib operators (com.microsoft): ONNX Runtime's CPU/mobile builds


def _any_onnx() -> list[str]:
    """Who loads a graph of standard operators: every runtime of the registry that reads onnx."""
    from edgedistill.runtime import registry

    return [r.name for r in registry.RUNTIMES if "onnx" in r.reads]
RANKING_IMAGES = 8  # calibration images the per-node sensitivity is measured on
_INT8_SOURCE = {"onnx_int8": "onnx_fp32", "onnx_fused_int8": "onnx_fused_fp32"}


def build_variant(name: str, build: Build) -> None:
    if name == "onnx_fp32":
        # the plain graph: standard ONNX operators every runtime loads (onnxruntime-web included)
        path = build.onnx_graph(shipped=build.work / "onnx_fp32.onnx")
        build.add(name, path, {"format": "onnx", "precision": "fp32", "graph": "plain", "runtimes": _any_onnx()})
    elif name == "onnx_fused_fp32":
        from edgedistill.runtime.onnxruntime.fused import export_fused_onnx

        path = build.work / f"{name}.onnx"
        settings = export_fused_onnx(build.graph, path, build.export_onnx)
        build.add(name, path, {"format": "onnx", "precision": "fp32", "graph": "fused attention",
                               "runtimes": list(ORT_ONLY), "exporter": settings})
    else:
        _build_int8(name, build, _INT8_SOURCE[name])


def _build_int8(name: str, build: Build, source: str) -> None:
    """ONNX Runtime dynamic INT8 (``quantize.ORT_INT8``) of the FP32 variant ``source``.

    Dynamic INT8 takes each activation's range over the whole call, so an image's embedding
    depends on the images beside it: the entry declares ``batch: 1`` (the gates, ``eval`` and
    the deploy examples run it one image per call) and records how much a batched call of the
    calibration images differs (``quantization.batch_dependence``)."""
    from edgedistill.runtime.onnxruntime.embedder import OnnxEmbedder
    from edgedistill.runtime.onnxruntime.quantize import batch_dependence, quantize_ort_int8

    advance = build.task(f"quantizing {name}", total=1)
    path = build.work / f"{name}.onnx"
    settings = quantize_ort_int8(build.files[source], path)
    advance(1)
    portable = _standard_operators_only(path)  # no com.microsoft contrib operators: onnxruntime-web loads it
    quantization = dict(settings, source_graph=source)
    if build.calibration_images is not None and len(build.calibration_images) > 1:
        embedder = OnnxEmbedder(path, threads=build.options.threads)
        quantization["batch_dependence"] = batch_dependence(embedder.embed, build.calibration_images)
    build.add(name, path, {"format": "onnx", "precision": "int8", "graph": build.entries[source].graph,
                           "runtimes": _any_onnx() if portable else list(ORT_ONLY), "batch": 1,
                           "quantization": quantization})


def _standard_operators_only(path: Path) -> bool:
    import onnx

    return all(node.domain in ("", "ai.onnx") for node in onnx.load(str(path), load_external_data=False).graph.node)


# ----------------------------------------------------------------------------- accuracy control


def _quantizable_nodes(path: Path) -> list[str]:
    import onnx

    from edgedistill.runtime.onnxruntime.quantize import ORT_INT8

    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    # the nodes the quantizer turns into INT8: the recipe's op types with a constant weight input
    return [n.name for n in graph.node if n.op_type in ORT_INT8["op_types"] and any(i in weights for i in n.input)]


def _sensitivity(build: Build, source: Path, nodes: list[str], images: np.ndarray,
                 reference: np.ndarray, recovery: Recovery) -> dict[str, float]:
    """1 - cosine to FP32 when only that node is quantized (each node a step of ``recovery``)."""
    from edgedistill.runtime.knn import compare
    from edgedistill.runtime.onnxruntime.embedder import OnnxEmbedder
    from edgedistill.runtime.onnxruntime.quantize import quantize_ort_int8

    damage = {}
    probe = build.work / ".sensitivity.onnx"
    for node in nodes:
        quantize_ort_int8(source, probe, exclude=[n for n in nodes if n != node])
        embedder = OnnxEmbedder(probe, threads=build.options.threads)
        output = np.concatenate([embedder.embed(images[i:i + 1]) for i in range(len(images))])  # as the gate runs it
        damage[node] = 1.0 - compare(reference, output)["min_cosine"]
        recovery.step(len(damage), len(nodes) + recovery.attempts, f"sensitivity of {node}")
    probe.unlink(missing_ok=True)
    return damage


def recover(name: str, build: Build, recovery: Recovery) -> RecoveryRecord:
    """Each quantizable node quantized alone and ranked by how far it moves the output from
    FP32; then the 1, 2, 4, ... most sensitive stay in float (``nodes_to_exclude``) until the
    k-NN gate passes or the attempts are spent."""
    import torch

    from edgedistill.runtime.onnxruntime.quantize import quantize_ort_int8

    images = recovery.calibration[:RANKING_IMAGES]
    with torch.inference_mode():
        reference = build.graph(torch.from_numpy(images))
        reference = (reference[0] if isinstance(reference, tuple) else reference).numpy()
    source = build.files[_INT8_SOURCE[name]]
    nodes = _quantizable_nodes(source)
    damage = _sensitivity(build, source, nodes, images, reference, recovery)
    ranked = sorted(nodes, key=lambda n: -damage[n])
    steps: list[dict[str, Any]] = []
    excluded = 0
    while len(steps) < recovery.attempts and excluded < len(ranked):
        excluded = min(len(ranked), max(1, 2 * excluded))
        settings = quantize_ort_int8(source, build.files[name], exclude=ranked[:excluded])
        quantization = build.entries[name].quantization
        assert quantization is not None, "an INT8 variant records its quantization"
        quantization.update(settings)
        figures = recovery.check(name)
        steps.append({"float_nodes": excluded, "top1": figures["top1"], "knn_delta": figures["knn_delta"]})
        if figures["passed"]:
            break
        recovery.step(len(nodes) + len(steps), len(nodes) + recovery.attempts,
                      f"{excluded} in float: k-NN top-1 {figures['top1']:.2f}%")
    return {"method": "per-node sensitivity (output cosine, quantized alone), most sensitive kept in float",
            "float_layers": ranked[:excluded], "sensitivity": {n: float(f"{damage[n]:.3g}") for n in ranked[:excluded]},
            "attempts": steps}
