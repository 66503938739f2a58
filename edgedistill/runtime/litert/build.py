"""LiteRT's bundle variants: the student converted by litert-torch to a ``.tflite`` model (FP32)
and quantized by ai-edge-quantizer (INT8), design.md §7.

* **Conversion**: ``litert_torch.convert`` of the exported graph (``export.onnx.EmbeddingModel``)
  straight from torch, at a static batch of 1: with a dynamic batch axis its lowering fails on
  the patch embedding's flatten (litert-torch 0.10), and one image per invocation is how an
  Android app runs it. onnx2tf (ONNX -> TensorFlow -> TFLite) is the fallback this did not
  need: it goes through TensorFlow and a layout rewrite, where litert-torch lowers the torch
  graph itself and is what Google ships for PyTorch models.
* **INT8**: dynamic-range quantization (``dynamic_wi8_afp32``: int8 weights per channel,
  activations quantized at run time from their own range, float input and output), chosen
  by ``benchmarks/litert_int8.py`` over full-integer quantization (``static_wi8_ai8``,
  calibrated on the export's images), which quantizes the norms, softmax and residual adds
  too and was both slower under XNNPACK and far from FP32 (figures in export/README.md).
  :data:`INT8_SCHEMES` holds both; the benchmark measures them side by side.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.base import Build

__all__ = ["INT8_SCHEMES", "INT8_SCHEME", "build_variant", "convert_litert", "quantize_litert", "litert_versions"]

INT8_SCHEMES = {
    "dynamic": {"tool": "ai_edge_quantizer", "recipe": "dynamic_wi8_afp32",
                "weights": "int8, per channel, symmetric", "activations": "int8, dynamic (ranges at run time)",
                "input_output": "float32", "calibration": "none"},
    "full_integer": {"tool": "ai_edge_quantizer", "recipe": "static_wi8_ai8",
                     "weights": "int8, per channel, symmetric", "activations": "int8, per tensor, static (min-max)",
                     "input_output": "int8 (scale and zero point in the model)", "calibration": "the export's images"},
}
INT8_SCHEME = "dynamic"  # what the bundle ships


def litert_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for package in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch and ai-edge-quantizer print progress, sizes and log lines: not the user's
    business (the export draws its own progress)."""
    from edgedistill.runtime.litert.engine import quiet

    quiet()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def convert_litert(graph: Any, path: str | Path, img_size: int) -> dict[str, Any]:
    """``graph`` (in eval mode) as an FP32 ``.tflite`` at ``path``, batch 1. Returns the settings."""
    import torch

    with _quiet():
        import litert_torch

        model = litert_torch.convert(graph.eval(), (torch.zeros(1, 3, img_size, img_size),))
        model.export(str(path))
    return {"tool": "litert_torch.convert", "source": "torch (the exported graph)", "batch": 1,
            "versions": litert_versions()}


def quantize_litert(fp32_path: str | Path, out_path: str | Path, *, scheme: str = INT8_SCHEME,
                    images: np.ndarray | None = None, on_item: Callable[[int], None] | None = None) -> dict[str, Any]:
    """INT8 of the FP32 model into ``out_path`` by ai-edge-quantizer with the recipe of
    ``scheme`` (:data:`INT8_SCHEMES`); ``full_integer`` calibrates on ``images`` (N, 3, H, W)."""
    if scheme not in INT8_SCHEMES:
        raise EdgeDistillError(f"unknown LiteRT INT8 scheme {scheme!r} (choose {', '.join(INT8_SCHEMES)})")
    with _quiet():
        from ai_edge_quantizer import quantizer, recipe

        q = quantizer.Quantizer(str(fp32_path))
        q.load_quantization_recipe(getattr(recipe, INT8_SCHEMES[scheme]["recipe"])())
        calibration = None
        if q.need_calibration:
            if images is None or len(images) == 0:
                raise EdgeDistillError("full-integer INT8 needs calibration images")
            from ai_edge_litert.interpreter import Interpreter

            (signature, io_names), = Interpreter(model_path=str(fp32_path)).get_signature_list().items()
            name = io_names["inputs"][0]
            items = [{name: np.ascontiguousarray(images[i:i + 1], np.float32)} for i in range(len(images))]
            calibration = q.calibrate({signature: items})
        if on_item is not None:
            on_item(0 if images is None else len(images))
        q.quantize(calibration).export_model(str(out_path), overwrite=True)
    return {**INT8_SCHEMES[scheme], "scheme": scheme,
            "calibration_images": int(len(images)) if calibration is not None and images is not None else 0,
            "versions": litert_versions()}


def _entry(precision: str, settings: dict[str, Any]) -> dict[str, Any]:
    runtime = {"library": "ai-edge-litert", "version": litert_versions()["ai-edge-litert"], "delegate": "XNNPACK",
               "batch": 1, "python": "ai_edge_litert.interpreter.Interpreter",
               "android": "com.google.ai.edge.litert:litert (org.tensorflow.lite.Interpreter)"}
    return {"format": "litert", "precision": precision, "batch": 1, "runtime": runtime, **settings}


def build_variant(name: str, build: Build) -> None:
    path = build.work / f"{name}.tflite"
    if name == "litert_fp32":
        build.add(name, path, _entry("fp32", {"conversion": convert_litert(build.graph, path, build.img_size)}))
        return
    calib = build.calibration_images
    advance = build.task(f"quantizing {name} (ai-edge-quantizer)", total=None if calib is None else len(calib))
    settings = quantize_litert(build.files["litert_fp32"], path, images=calib, on_item=advance)
    if settings["calibration_images"]:  # a dynamic recipe calibrates on nothing: record none
        settings["calibration"] = build.calibration
    build.add(name, path, _entry("int8", {"quantization": settings}))
