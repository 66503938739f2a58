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
from typing import Any, Callable, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.base import Build, Recovery, RecoveryRecord

__all__ = ["build_variant", "recover", "convert_openvino", "quantize_openvino", "quantize_openvino_controlled",
           "int8_precision_hint", "INFERENCE_PRECISION_HINT"]

INFERENCE_PRECISION_HINT = "f32"  # FP32/FP16 variants: true fp32 arithmetic
RANKING_ITEMS = 30  # validation items whose outputs rank the layers in accuracy control (NNCF's default: 300)
EMBED_BATCH = 64  # the k-NN bank and queries in accuracy control's metric


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
                                 validation: tuple[list[Any], Callable[[Any, Any], tuple[float, Any]]], *,
                                 max_drop: float, max_layers: int, on_item: Callable[[], None] | None = None,
                                 ranking_items: int = RANKING_ITEMS) -> dict[str, Any]:
    """NNCF INT8 with accuracy control: ``validation`` is (items, metric(compiled model, items)),
    items ``(image, label)``; at most ``max_layers`` operations are reverted to float to keep the
    metric within ``max_drop`` (absolute, the metric's units) of FP32. A metric that also returns
    each item's outputs puts NNCF in its outputs mode: it ranks the operations by how far each
    moves the outputs of ``ranking_items`` items instead of calling the metric per item.
    ``on_item`` runs before every inference NNCF makes on a validation item (it may raise to stop)."""
    ov = _openvino()
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from edgedistill.runtime.openvino.sigstack import keep_signal_stack
    from edgedistill.utils import quiet_stdout

    items, metric = validation

    def transform(item: Any) -> np.ndarray:
        if on_item is not None:
            on_item()
        return item[0][None]

    calibration = [np.ascontiguousarray(images[i:i + 1], dtype=np.float32) for i in range(len(images))]
    model = ov.Core().read_model(str(fp32_xml))
    previous = nncf.common.logging.nncf_logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with quiet_stdout(False), keep_signal_stack():  # it replaces the thread's signal stack, then frees it
            quantized = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(calibration), nncf.Dataset(items, transform), metric,
                max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    max_num_iterations=max_layers, ranking_subset_size=min(ranking_items, len(items)),
                    num_ranking_workers=1))  # one: a stop raised from on_item reaches the caller
    finally:
        nncf.set_log_level(previous)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return {"tool": "nncf.quantize_with_accuracy_control", "nncf_version": nncf.__version__,
            "model_type": "TRANSFORMER", "preset": "performance", "max_drop": max_drop,
            "ranking_items": min(ranking_items, len(items)), "float_layers": _float_layers(quantized)}


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
    NNCF ranks the quantized operations by how far each moves the embeddings and reverts them
    one by one. Each validation is a step of ``recovery`` (progress, and its time bound)."""
    max_layers = recovery.attempts * 4
    queries, metric, on_item = _validation(recovery, total=max_layers + 2)
    settings = quantize_openvino_controlled(build.files["openvino_fp32"], build.files[name], recovery.calibration,
                                            (queries, metric), max_drop=recovery.max_drop, max_layers=max_layers,
                                            on_item=on_item)
    quantization = build.entries[name].quantization
    assert quantization is not None, "an INT8 variant records its quantization"
    quantization.update({k: v for k, v in settings.items() if k != "float_layers"})
    figures = recovery.check(name)
    return {"method": "nncf.quantize_with_accuracy_control, k-NN top-1 as the metric",
            "float_layers": settings["float_layers"],
            "attempts": [{"float_nodes": len(settings["float_layers"]), "top1": figures["top1"],
                          "knn_delta": figures["knn_delta"]}]}


def _validation(recovery: Recovery, total: int) -> tuple[list[Any], Callable[[Any, Any], tuple[float, Any]],
                                                         Callable[[], None]]:
    """NNCF's validation set (the k-NN queries, as (input, label) items) and its metric: the
    k-NN top-1 of a compiled model, with the bank embedded by that same model, in batches (the
    IR's batch is dynamic), once per call; it also returns each query's embedding, so that NNCF
    ranks layers by output damage rather than by a k-NN per query (a bank per query image: the
    25-minute stall). A call on the whole query set is a step of ``recovery``; the third item,
    run before each inference NNCF makes itself (its ranking), reports that and keeps the time bound."""
    from edgedistill.runtime.knn import knn_classify

    queries = [recovery.queries[i] for i in range(len(recovery.queries))]
    bank_y = np.asarray([recovery.bank[i][1] for i in range(len(recovery.bank))])
    done = [0]

    def embed(compiled: Any, split: Sequence[Any]) -> np.ndarray:
        output, feats = compiled.outputs[0], []
        for start in range(0, len(split), EMBED_BATCH):
            batch = np.stack([np.asarray(split[i][0], np.float32) for i in range(start, min(start + EMBED_BATCH,
                                                                                              len(split)))])
            feats.append(np.asarray(compiled(batch)[output]))
            recovery.check_time()
        return np.concatenate(feats)

    def metric(compiled: Any, items: Any) -> tuple[float, list[list[np.ndarray]]]:
        items = list(items)
        query_f = embed(compiled, items)
        result = knn_classify(embed(compiled, recovery.bank), bank_y, query_f, recovery.num_classes, ks=(20,),
                              val_labels=np.asarray([y for _, y in items]))
        top1 = float(result["top1"])
        if len(items) == len(queries):  # not NNCF's probe of one item
            done[0] += 1
            recovery.step(done[0], total, f"k-NN top-1 {top1:.2f}%")
        return top1, [[f] for f in query_f]

    def on_item() -> None:
        recovery.progress(done[0], total, f"NNCF ranks the layers by their damage to the embeddings ({RANKING_ITEMS} "
                                          "queries per layer group)")
        recovery.check_time()

    return queries, metric, on_item
