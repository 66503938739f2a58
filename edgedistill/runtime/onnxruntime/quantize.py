"""ONNX Runtime INT8: the dynamic quantization the bundle ships (:data:`ORT_INT8`), and the
static QDQ one ``benchmarks/ort_int8_options.py`` compares it with (design.md §7).

Static QDQ settings, and why:

* ``QuantFormat.QDQ``: QuantizeLinear/DequantizeLinear pairs around float ops, the format
  every ONNX Runtime execution provider (and onnxruntime-web) understands.
* ``op_types_to_quantize=["MatMul", "Gemm", "Conv"]``: ORT's default list also quantizes
  LayerNorm inputs, Reshape, Transpose and Softmax outputs; on a ViT that costs accuracy
  (cosine about 0.90 against FP32 on this machine) for little speed. MatMul/Gemm/Conv are
  where the time goes.
* ``per_channel=True`` (weights): ViT projection weights have very different ranges per
  output channel; one scale per tensor loses the small ones.
* int8 activations and weights (S8S8), ``reduce_range=False``: ORT's recommended QDQ
  default on x86 with VNNI.
* Calibration on real images preprocessed exactly as an app does (the manifest's numpy
  preprocessing), method minmax (default), entropy or percentile (99.999).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.utils import quiet_stdout

__all__ = ["ORT_CALIB_METHODS", "ORT_OP_TYPES", "ORT_INT8", "ArrayCalibrationReader", "quantize_onnx",
           "quantize_onnx_dynamic", "quantize_ort_int8"]

ORT_CALIB_METHODS = ("minmax", "entropy", "percentile")
ORT_OP_TYPES = ("MatMul", "Gemm", "Conv")
PERCENTILE = 99.999


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # quantize_static logs "please consider pre-processing" on the root logger every time;
    # its advice (symbolic shape inference + graph fusion) changes the graph we validated
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


class ArrayCalibrationReader:
    """An ONNX Runtime ``CalibrationDataReader`` over preprocessed images (N, 3, H, W).

    Yields ``{input_name: images[i:i + batch_size]}``; ``on_batch(n)`` is called with the
    number of images of every batch handed out (progress)."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 8,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = max(int(batch_size), 1)
        self.on_batch = on_batch
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.images):
            return None
        batch = self.images[self._start:self._start + self.batch_size]
        self._start += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._start = 0

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, images: np.ndarray, *, method: str = "minmax",
                  input_name: str = "pixel_values", on_batch: Callable[[int], None] | None = None,
                  show_library_output: bool = False, nodes_to_exclude: list[str] | None = None) -> dict[str, Any]:
    """Static QDQ INT8 of ``fp32_path`` into ``out_path``, calibrated on ``images``
    (N, 3, H, W) float32. Returns the settings (for the manifest)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if method not in ORT_CALIB_METHODS:
        raise EdgeDistillError(f"unknown calibration method {method!r} (choose {', '.join(ORT_CALIB_METHODS)})")
    if len(images) == 0:
        raise EdgeDistillError("INT8 calibration needs at least one image")

    class _Reader(ArrayCalibrationReader, CalibrationDataReader):
        pass

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    extra: dict[str, Any] = {}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    reader = _Reader(images, input_name, on_batch=on_batch)
    with _quiet_root_logger(), quiet_stdout(show_library_output):
        quantize_static(
            str(fp32_path), str(out_path), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ORT_OP_TYPES),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
            use_external_data_format=False,
            extra_options=extra,
            nodes_to_exclude=list(nodes_to_exclude or []),
        )
    settings: dict[str, Any] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "op_types": list(ORT_OP_TYPES),
        "per_channel": True,
        "reduce_range": False,
        "activation_type": "int8",
        "weight_type": "int8",
        "calibration_method": method,
        "calibration_images": int(len(images)),
        "nodes_excluded": list(nodes_to_exclude or []),
    }
    if method == "percentile":
        settings["percentile"] = PERCENTILE
    return settings


def quantize_onnx_dynamic(fp32_path: str | Path, out_path: str | Path, *, per_channel: bool = False,
                          op_types: Sequence[str] | None = None,
                          nodes_to_exclude: list[str] | None = None) -> dict[str, Any]:
    """Dynamic INT8 of ``fp32_path`` into ``out_path``: weights quantized once (int8), each
    activation at run time from its own range, so no calibration set can be unrepresentative.
    ``op_types`` limits which operators are quantized (None: ONNX Runtime's list, which turns
    a fused ``Attention`` into ``QAttention``); ``nodes_to_exclude`` stay in float (accuracy
    control). Returns the settings (for the manifest)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=list(op_types) if op_types is not None else None,
                         nodes_to_exclude=list(nodes_to_exclude or []), use_external_data_format=False)
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "format": "QOperator (dynamic)",
            "per_channel": per_channel, "op_types": list(op_types) if op_types is not None else "onnxruntime default",
            "weight_type": "int8", "activation_type": "uint8, ranges at run time",
            "nodes_excluded": list(nodes_to_exclude or [])}


# The ONNX Runtime INT8 recipe of both graphs (``onnx_int8`` from the plain one, which keeps to
# standard operators that onnxruntime-web loads; ``onnx_fused_int8`` from the fused one, where the
# Attention nodes become QAttention), chosen by benchmarks/ort_int8_options.py (figures in
# export/README.md): dynamic beat every static option; the patch embedding's Conv stays float,
# because ConvInteger took 5x the float Conv's time on x86 (1.8 vs 0.34 ms, ViT-T/16).
ORT_INT8 = {"method": "dynamic", "per_channel": False, "op_types": ("MatMul", "Attention")}


def quantize_ort_int8(source: str | Path, out_path: str | Path, images: np.ndarray, *, calib_method: str = "minmax",
                      exclude: list[str] | None = None, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The ONNX Runtime INT8 the bundle ships (:data:`ORT_INT8`), with ``exclude`` nodes in float."""
    if ORT_INT8["method"] == "dynamic":
        if on_batch is not None:
            on_batch(len(images))  # nothing to calibrate: activation ranges are taken at run time
        return quantize_onnx_dynamic(source, out_path, per_channel=bool(ORT_INT8["per_channel"]),
                                     op_types=ORT_INT8["op_types"], nodes_to_exclude=exclude)
    return quantize_onnx(source, out_path, images, method=calib_method, on_batch=on_batch, nodes_to_exclude=exclude)
