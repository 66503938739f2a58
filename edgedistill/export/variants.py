"""The bundle's variants, one builder each: a new variant is one function and one line in
:data:`BUILDERS`.

A builder writes its model file(s) into the bundle's work directory and returns its manifest
entry (format, precision, precision hint, quantization settings); :class:`Built` collects
them in order. :func:`embedders_for` opens a built variant the way an app does (the runtime
embedders), which is how the gates judge it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgedistill.export.plan import ExportPlan

__all__ = ["Built", "BUILDERS", "FP_VARIANTS", "INT8_VARIANTS", "build_variants", "embedders_for"]

FP_VARIANTS = ("onnx_fp32", "onnx_fused_fp32", "openvino_fp32", "openvino_fp16", "executorch_fp32")
INT8_VARIANTS = ("onnx_int8", "onnx_fused_int8", "openvino_int8", "executorch_int8")
INTERMEDIATE_ONNX = ".intermediate_fp32.onnx"  # the FP32 graph OpenVINO converts, when ONNX is not shipped
ANY_ONNX = ("onnxruntime", "onnxruntime-web", "openvino")  # who loads a graph of standard operators
ORT_ONLY = ("onnxruntime",)  # contrib operators (com.microsoft): ONNX Runtime's CPU/mobile builds


@dataclass
class Built:
    """Variants written so far: their main file and manifest entry, and the exporter settings."""

    work: Path
    files: dict[str, Path] = field(default_factory=dict)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    onnx_export: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    calibration_images: np.ndarray | None = None

    @property
    def onnx_fp32(self) -> Path:
        """The exported FP32 graph (shipped as ``onnx_fp32`` or kept aside for conversion)."""
        shipped = self.work / "onnx_fp32.onnx"
        return shipped if shipped.exists() else self.work / INTERMEDIATE_ONNX

    def add(self, name: str, path: Path, entry: dict[str, Any]) -> None:
        self.files[name], self.entries[name] = path, entry

    def hint(self, name: str) -> str | None:
        """The OpenVINO inference precision hint a variant records (None for ONNX)."""
        return self.entries[name].get("inference_precision_hint")


# ----------------------------------------------------------------------------- FP32 / FP16


def _onnx_graph(plan: ExportPlan, built: Built, ship: bool) -> Path:
    from edgedistill.export.onnx import export_onnx

    path = built.work / ("onnx_fp32.onnx" if ship else INTERMEDIATE_ONNX)
    if not path.exists():
        built.onnx_export = export_onnx(plan.graph, path, plan.img_size, plan.options["opset"])
    return path


def build_onnx_fp32(plan: ExportPlan, built: Built, **_: Any) -> None:
    """The plain graph: standard ONNX operators every runtime loads (onnxruntime-web included)."""
    built.add("onnx_fp32", _onnx_graph(plan, built, ship=True), {"format": "onnx", "precision": "fp32",
                                                                  "graph": "plain", "runtimes": list(ANY_ONNX)})


def build_onnx_fused_fp32(plan: ExportPlan, built: Built, **_: Any) -> None:
    """The fused-attention graph ONNX Runtime runs fastest (``export.ort_fused``)."""
    from edgedistill.export.ort_fused import export_fused_onnx

    path = built.work / "onnx_fused_fp32.onnx"
    settings = export_fused_onnx(plan.graph, path, plan.img_size, plan.options["opset"])
    built.add("onnx_fused_fp32", path, {"format": "onnx", "precision": "fp32", "graph": "fused attention",
                                        "runtimes": list(ORT_ONLY), "exporter": settings})


def _build_openvino(plan: ExportPlan, built: Built, name: str, fp16: bool) -> None:
    from edgedistill.export.openvino import INFERENCE_PRECISION_HINT, convert_openvino

    source = _onnx_graph(plan, built, ship="onnx" in plan.formats)
    path = built.work / f"{name}.xml"
    settings = convert_openvino(source, path, fp16=fp16)
    built.add(name, path, {"format": "openvino", "precision": "fp16" if fp16 else "fp32",
                           "inference_precision_hint": INFERENCE_PRECISION_HINT, "conversion": settings})


def build_openvino_fp32(plan: ExportPlan, built: Built, **_: Any) -> None:
    _build_openvino(plan, built, "openvino_fp32", fp16=False)


def build_openvino_fp16(plan: ExportPlan, built: Built, **_: Any) -> None:
    _build_openvino(plan, built, "openvino_fp16", fp16=True)


# ----------------------------------------------------------------------------- INT8


def _build_ort_int8(plan: ExportPlan, built: Built, name: str, source: str, calib: np.ndarray, bar: Any) -> None:
    """ONNX Runtime INT8 (``export.quantize.ORT_INT8``) of the FP32 variant ``source``."""
    from edgedistill.export.quantize import quantize_ort_int8

    task = bar.add_task(f"quantizing {name}", total=len(calib))
    path = built.work / f"{name}.onnx"
    settings = quantize_ort_int8(built.files[source], path, calib, calib_method=plan.options["calib_method"],
                                 on_batch=lambda n: bar.advance(task, n))
    portable = _standard_operators_only(path)  # no com.microsoft contrib operators: onnxruntime-web loads it
    built.add(name, path, {"format": "onnx", "precision": "int8", "graph": built.entries[source]["graph"],
                           "runtimes": list(ANY_ONNX if portable else ORT_ONLY),
                           "quantization": dict(settings, source_graph=source, calibration=built.calibration)})


def build_onnx_int8(plan: ExportPlan, built: Built, *, calib: np.ndarray, bar: Any, **_: Any) -> None:
    """INT8 of the plain graph: standard operators only, so every ONNX runtime loads it."""
    _build_ort_int8(plan, built, "onnx_int8", "onnx_fp32", calib, bar)


def build_onnx_fused_int8(plan: ExportPlan, built: Built, *, calib: np.ndarray, bar: Any, **_: Any) -> None:
    """INT8 of the fused-attention graph (planned with it): the fastest on ONNX Runtime (CPU, mobile)."""
    _build_ort_int8(plan, built, "onnx_fused_int8", "onnx_fused_fp32", calib, bar)


def _standard_operators_only(path: Path) -> bool:
    import onnx

    return all(node.domain in ("", "ai.onnx") for node in onnx.load(str(path), load_external_data=False).graph.node)


def build_openvino_int8(plan: ExportPlan, built: Built, *, calib: np.ndarray, bar: Any, **_: Any) -> None:
    from edgedistill.export.openvino import int8_precision_hint, quantize_openvino

    task = bar.add_task("calibrating openvino_int8 (NNCF passes)", total=None)
    path = built.work / "openvino_int8.xml"
    hint = int8_precision_hint(plan.options["int8_hint"])
    settings = quantize_openvino(built.files["openvino_fp32"], path, calib, on_item=lambda: bar.advance(task))
    bar.update(task, total=bar.tasks[task].completed)
    built.add("openvino_int8", path, {"format": "openvino", "precision": "int8", "inference_precision_hint": hint,
                                      "quantization": dict(settings, calibration=built.calibration)})


def _executorch_entry(precision: str, settings: dict[str, Any]) -> dict[str, Any]:
    from edgedistill.export.executorch import executorch_version

    runtime = {"library": "executorch", "version": executorch_version(), "delegate": "XNNPACK",
               "python": "executorch.runtime.Runtime (loads libtorch)",
               "android": "org.pytorch.executorch.Module", "ios": "ExecuTorch.framework Module"}
    return {"format": "executorch", "precision": precision, "runtime": runtime, **settings}


def build_executorch_fp32(plan: ExportPlan, built: Built, **_: Any) -> None:
    from edgedistill.export.executorch import export_executorch_fp32

    path = built.work / "executorch_fp32.pte"
    settings = export_executorch_fp32(plan.graph, path, plan.img_size)
    built.add("executorch_fp32", path, _executorch_entry("fp32", {"lowering": settings}))


def build_executorch_int8(plan: ExportPlan, built: Built, *, calib: np.ndarray, bar: Any, **_: Any) -> None:
    from edgedistill.export.executorch import export_executorch_int8

    task = bar.add_task("calibrating executorch_int8 (PT2E)", total=len(calib))
    path = built.work / "executorch_int8.pte"
    settings = export_executorch_int8(plan.graph, path, plan.img_size, calib, on_batch=lambda n: bar.advance(task, n))
    built.add("executorch_int8", path, _executorch_entry("int8", {"quantization": dict(settings,
                                                                                     calibration=built.calibration)}))


BUILDERS: dict[str, Callable[..., None]] = {
    "onnx_fp32": build_onnx_fp32,
    "onnx_fused_fp32": build_onnx_fused_fp32,
    "openvino_fp32": build_openvino_fp32,
    "openvino_fp16": build_openvino_fp16,
    "onnx_int8": build_onnx_int8,
    "onnx_fused_int8": build_onnx_fused_int8,
    "openvino_int8": build_openvino_int8,
    "executorch_fp32": build_executorch_fp32,
    "executorch_int8": build_executorch_int8,
}


def build_variants(plan: ExportPlan, built: Built, names: Sequence[str], **context: Any) -> list[str]:
    """Build the planned variants among ``names`` in order; returns the ones built."""
    done = []
    for name in names:
        if name in plan.variants:
            BUILDERS[name](plan, built, **context)
            done.append(name)
    return done


def embedders_for(built: Built, name: str, outputs: Sequence[str], threads: int | None,
                  hint: str | None = None) -> dict[str, Any]:
    """The app's path to a variant: one runtime embedder per output; OpenVINO with the
    variant's recorded precision hint unless ``hint`` overrides it."""
    from edgedistill.runtime.embedders import ExecuTorchEmbedder, OnnxEmbedder, OpenVinoEmbedder

    path = built.files[name]
    if built.entries[name]["format"] == "onnx":
        return {o: OnnxEmbedder(path, threads=threads, output=o, name=name) for o in outputs}
    if built.entries[name]["format"] == "executorch":
        return {o: ExecuTorchEmbedder(path, threads=threads, output=o, outputs=outputs, name=name) for o in outputs}
    precision = hint or built.hint(name)
    return {o: OpenVinoEmbedder(path, threads=threads, precision=precision, output=o, name=name) for o in outputs}
