"""ONNX Runtime INT8: the dynamic quantization the bundle ships (:data:`ORT_INT8`), chosen over
static QDQ by ``benchmarks/ort_int8_options.py`` (figures in export/README.md; design.md §7).

Dynamic INT8 quantizes the weights once (int8, per tensor) and each activation at run time from
its own range: nothing to calibrate, so no calibration set can be unrepresentative. The range is
taken over the whole tensor of one call, the batch included, so an image's embedding depends
slightly on the images run beside it: the bundle declares ``batch: 1`` for these variants and
every gate figure is measured one image per call (:func:`batch_dependence` measures how much a
batched call differs).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["ORT_INT8", "ArrayCalibrationReader", "quantize_onnx_dynamic", "quantize_ort_int8", "batch_dependence"]


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # the quantizer logs "please consider pre-processing" on the root logger every time; its
    # advice (symbolic shape inference + graph fusion) changes the graph we validated
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


class ArrayCalibrationReader:
    """An ONNX Runtime ``CalibrationDataReader`` over preprocessed images (N, 3, H, W), for
    static quantization (``benchmarks/ort_int8_options.py`` compares it with the dynamic one).

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


def quantize_onnx_dynamic(fp32_path: str | Path, out_path: str | Path, *, per_channel: bool = False,
                          op_types: Sequence[str] | None = None,
                          nodes_to_exclude: list[str] | None = None) -> dict[str, Any]:
    """Dynamic INT8 of ``fp32_path`` into ``out_path``: weights quantized once (int8), each
    activation at run time from its own range. ``op_types`` limits which operators are
    quantized (None: ONNX Runtime's list, which turns a fused ``Attention`` into
    ``QAttention``); ``nodes_to_exclude`` stay in float (accuracy control). Returns the
    settings (for the manifest)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=list(op_types) if op_types is not None else None,
                         nodes_to_exclude=list(nodes_to_exclude or []), use_external_data_format=False)
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "format": "QOperator (dynamic)",
            "per_channel": per_channel, "op_types": list(op_types) if op_types is not None else "onnxruntime default",
            "weight_type": "int8",
            "activation_type": "uint8, range taken at run time over the whole call (the batch included)",
            "calibration": "none: activation ranges are taken at run time", "nodes_excluded": list(nodes_to_exclude or [])}


# The ONNX Runtime INT8 recipe of both graphs (``onnx_int8`` from the plain one, which keeps to
# standard operators that onnxruntime-web loads; ``onnx_fused_int8`` from the fused one, where the
# Attention nodes become QAttention), chosen by benchmarks/ort_int8_options.py (figures in
# export/README.md): dynamic beat every static option; the patch embedding's Conv stays float,
# because ConvInteger took 5x the float Conv's time on x86 (1.8 vs 0.34 ms, ViT-T/16).
ORT_INT8 = {"method": "dynamic", "per_channel": False, "op_types": ("MatMul", "Attention")}


def quantize_ort_int8(source: str | Path, out_path: str | Path, *, exclude: list[str] | None = None) -> dict[str, Any]:
    """The ONNX Runtime INT8 the bundle ships (:data:`ORT_INT8`), with ``exclude`` nodes in float."""
    return quantize_onnx_dynamic(source, out_path, per_channel=bool(ORT_INT8["per_channel"]),
                                 op_types=ORT_INT8["op_types"], nodes_to_exclude=exclude)


def batch_dependence(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> dict[str, Any]:
    """How much a model's embeddings of ``images`` differ when they run together in one call
    rather than one per call: the smallest cosine and the largest absolute difference."""
    from edgedistill.runtime.knn import compare

    alone = np.concatenate([np.asarray(embed(images[i:i + 1]), dtype=np.float32) for i in range(len(images))])
    together = np.asarray(embed(images), dtype=np.float32)
    figures = compare(alone, together)
    return {"images": int(len(images)), "min_cosine": round(float(figures["min_cosine"]), 7),
            "max_abs": float(f"{figures['max_abs']:.3g}"),
            "note": f"one call of {len(images)} images against one image per call; the gates ran one image per call"}
