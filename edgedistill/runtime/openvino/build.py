"""OpenVINO's bundle variants: IR conversion of the FP32 ONNX graph, NNCF INT8 post-training
quantization and its accuracy control (design.md §7).

Pitfalls handled here and in the manifest:

* ``openvino.save_model`` compresses weights to FP16 unless ``compress_to_fp16=False``: the
  FP32 variant keeps FP32 weights; the FP16 variant (``--fp16``) is a separate, labeled file.
* On CPUs with bf16 OpenVINO runs an "FP32" model in bf16 unless the inference precision
  hint says ``f32``: every OpenVINO variant records ``inference_precision_hint: "f32"`` in
  the manifest, and the gates judge it with that hint (the runtime embedder's default).
* NNCF with ``model_type=TRANSFORMER`` (SmoothQuant, fast bias correction, no quantization of
  LayerNorm/Softmax/GELU inputs) and the PERFORMANCE preset (symmetric activations: no
  zero-point arithmetic; measured 6-20% faster than the mixed preset on ViT-T/16 at batch 1
  with the same k-NN), calibrated on the same real images as ONNX Runtime.
* The INT8 variant's non-quantized ops (LayerNorm, Softmax, GELU, residual adds) run in bf16
  where the export CPU has native bf16 (``int8_precision_hint``): on this project's Xeon that
  took ViT-T/16 INT8 from about 0.37x to 0.31x of torch FP32 at batch 1. A device without
  bf16 silently runs that variant in f32, so the gates judge it both ways.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.base import Build, Recovery, RecoveryRecord

__all__ = ["build_variant", "recover", "convert_openvino", "quantize_openvino", "quantize_openvino_controlled",
           "int8_precision_hint", "INFERENCE_PRECISION_HINT"]

INFERENCE_PRECISION_HINT = "f32"  # FP32/FP16 variants: true fp32 arithmetic


def int8_precision_hint(requested: str = "auto") -> str:
    """The hint recorded for the OpenVINO INT8 variant: ``auto`` = bf16 where this CPU has
    native bf16 (AVX512-BF16/AMX; elsewhere bf16 is emulated and slower), else f32."""
    from edgedistill.utils import cpu_has_native_bf16

    if requested not in ("auto", "bf16", "f32"):
        raise EdgeDistillError(f"the INT8 precision hint must be auto, bf16 or f32, got {requested!r}")
    if requested == "auto":
        return "bf16" if cpu_has_native_bf16() else "f32"
    return requested


def _openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise EdgeDistillError("--formats openvino needs OpenVINO: pip install openvino") from None
    return ov


def convert_openvino(onnx_path: str | Path, xml_path: str | Path, *, fp16: bool = False) -> dict[str, Any]:
    """``openvino.convert_model`` of the exported ONNX graph (same names, same dynamic batch)
    saved as ``xml_path`` + ``.bin``; weights FP32 unless ``fp16``."""
    ov = _openvino()
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=bool(fp16))
    return {"tool": "openvino.convert_model", "source": "onnx", "compress_to_fp16": bool(fp16),
            "inference_precision_hint": INFERENCE_PRECISION_HINT}


def quantize_openvino(fp32_xml: str | Path, out_xml: str | Path, images: np.ndarray, *,
                      on_item: Callable[[], None] | None = None, show_library_output: bool = False) -> dict[str, Any]:
    """NNCF post-training INT8 of the FP32 IR into ``out_xml``, calibrated on ``images``
    (N, 3, H, W) float32, one image per calibration item, with NNCF's performance preset
    (symmetric activations). Returns the settings (the caller records the precision hint)."""
    ov = _openvino()
    # nncf imports torch utilities that warn about a missing CUDA runtime on CPU machines
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise EdgeDistillError("INT8 for OpenVINO needs NNCF: pip install nncf (or --no-int8)") from None
    from edgedistill.utils import quiet_stdout

    if len(images) == 0:
        raise EdgeDistillError("INT8 calibration needs at least one image")
    items = [np.ascontiguousarray(images[i:i + 1], dtype=np.float32) for i in range(len(images))]

    def transform(item: np.ndarray) -> np.ndarray:
        if on_item is not None:
            on_item()
        return item

    model = ov.Core().read_model(str(fp32_xml))
    previous = nncf.common.logging.nncf_logger.level
    nncf.set_log_level(logging.WARNING if show_library_output else logging.ERROR)
    try:
        with quiet_stdout(show_library_output):
            quantized = nncf.quantize(model, nncf.Dataset(items, transform), model_type=nncf.ModelType.TRANSFORMER,
                                      preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(items))
    finally:
        nncf.set_log_level(previous)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return {"tool": "nncf.quantize", "nncf_version": nncf.__version__, "model_type": "TRANSFORMER",
            "preset": "performance", "subset_size": len(items),
            "calibration_images": len(items)}


def _float_layers(model: Any) -> list[str]:
    """MatMul/Convolution operations whose activation input is not quantized (no FakeQuantize
    feeding it): the layers accuracy control left in floating point."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        if any(op.input_value(i).get_node().get_type_name() == "Constant" for i in range(op.get_input_size())) and \
                op.input_value(0).get_node().get_type_name() != "FakeQuantize":
            names.append(op.get_friendly_name())
    return names


def quantize_openvino_controlled(fp32_xml: str | Path, out_xml: str | Path, images: np.ndarray,
                                 validation: tuple[list[Any], Callable[[Any, Any], tuple[float, None]]], *,
                                 max_drop: float, max_layers: int) -> dict[str, Any]:
    """NNCF INT8 with accuracy control: ``validation`` is (items, metric(compiled model, items));
    at most ``max_layers`` operations are reverted to float to keep the metric within
    ``max_drop`` (absolute, the metric's units) of FP32."""
    ov = _openvino()
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from edgedistill.runtime.openvino.sigstack import keep_signal_stack
    from edgedistill.utils import quiet_stdout

    items, metric = validation
    calibration = [np.ascontiguousarray(images[i:i + 1], dtype=np.float32) for i in range(len(images))]
    model = ov.Core().read_model(str(fp32_xml))
    previous = nncf.common.logging.nncf_logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with quiet_stdout(False), keep_signal_stack():  # it replaces the thread's signal stack, then frees it
            quantized = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(calibration), nncf.Dataset(items, lambda item: item[0][None]), metric,
                max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    max_num_iterations=max_layers))
    finally:
        nncf.set_log_level(previous)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return {"tool": "nncf.quantize_with_accuracy_control", "nncf_version": nncf.__version__,
            "model_type": "TRANSFORMER", "preset": "performance", "max_drop": max_drop,
            "float_layers": _float_layers(quantized)}


# ----------------------------------------------------------------------------- variants


def build_variant(name: str, build: Build) -> None:
    if name in ("openvino_fp32", "openvino_fp16"):
        fp16 = name.endswith("fp16")
        path = build.work / f"{name}.xml"
        settings = convert_openvino(build.onnx_graph(), path, fp16=fp16)
        build.add(name, path, {"format": "openvino", "precision": "fp16" if fp16 else "fp32",
                               "inference_precision_hint": INFERENCE_PRECISION_HINT, "conversion": settings})
        return
    calib = build.calibration_images
    assert calib is not None, "INT8 variants are built after the calibration images are loaded"
    advance = build.task(f"calibrating {name} (NNCF passes)", total=None)
    path = build.work / f"{name}.xml"
    hint = int8_precision_hint(build.options.int8_hint)
    settings = quantize_openvino(build.files["openvino_fp32"], path, calib, on_item=advance)
    build.add(name, path, {"format": "openvino", "precision": "int8", "inference_precision_hint": hint,
                           "quantization": dict(settings, calibration=build.calibration)})


def recover(name: str, build: Build, recovery: Recovery) -> RecoveryRecord:
    """NNCF's ``quantize_with_accuracy_control`` with the export's k-NN top-1 as its metric;
    NNCF ranks the quantized operations itself and reverts them one by one."""
    settings = quantize_openvino_controlled(build.files["openvino_fp32"], build.files[name], recovery.calibration,
                                            _validation(recovery), max_drop=recovery.max_drop,
                                            max_layers=recovery.attempts * 4)
    quantization = build.entries[name].quantization
    assert quantization is not None, "an INT8 variant records its quantization"
    quantization.update({k: v for k, v in settings.items() if k != "float_layers"})
    figures = recovery.check(name)
    return {"method": "nncf.quantize_with_accuracy_control, k-NN top-1 as the metric",
            "float_layers": settings["float_layers"],
            "attempts": [{"float_nodes": len(settings["float_layers"]), "top1": figures["top1"],
                          "knn_delta": figures["knn_delta"]}]}


def _validation(recovery: Recovery) -> tuple[list[Any], Callable[[Any, Any], tuple[float, None]]]:
    """NNCF's validation set (the k-NN queries, as (input, label) items) and its metric: the
    k-NN top-1 of a compiled model, with the bank embedded by that same model."""
    from edgedistill.runtime.knn import knn_classify

    queries = [recovery.queries[i] for i in range(len(recovery.queries))]
    bank = [recovery.bank[i] for i in range(len(recovery.bank))]

    def embed(compiled: Any, items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        output = compiled.outputs[0]
        feats = [np.asarray(compiled(np.ascontiguousarray(x[None], np.float32))[output]) for x, _ in items]
        return np.concatenate(feats), np.asarray([y for _, y in items])

    def metric(compiled: Any, items: Any) -> tuple[float, None]:
        bank_f, bank_y = embed(compiled, bank)
        query_f, query_y = embed(compiled, list(items))
        result = knn_classify(bank_f, bank_y, query_f, recovery.num_classes, ks=(20,), val_labels=query_y)
        return float(result["top1"]), None

    return queries, metric
