"""ExecuTorch's bundle variants: programs (``.pte``) with the XNNPACK delegate, FP32 and INT8
through PT2E quantization (design.md §7). XNNPACK is the backend ExecuTorch runs on Android, iOS and
Arm Linux; its Python runtime runs the same kernels here, which is how the gates judge it.

The graph is ``torch.export``-ed with a dynamic batch axis (1 to :data:`MAX_BATCH`), lowered
with ``to_edge_transform_and_lower`` and the XNNPACK partitioner, and serialized. INT8 is
post-training static quantization of the exported graph (``prepare_pt2e`` -> calibration on
real images through the manifest's preprocessing -> ``convert_pt2e``), with the scheme
:func:`int8_quantizer` builds. Its choice was measured (``benchmarks/executorch_int8.py``;
figures in ``export/README.md``): XNNPACKQuantizer's defaults (per-tensor weights, and the
residual adds quantized as well) gave cosine 0.92 against FP32 on a ViT-T/16, so only the
Linear and Conv layers are quantized, weights per channel (symmetric int8, what XNNPACK's
kernels take), activations per tensor (affine int8, histogram calibration); the norms,
softmax, GELU, the attention matmuls and the residual adds stay in FP32.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.base import Build

__all__ = ["MAX_BATCH", "INT8_SCHEME", "build_variant", "export_executorch_fp32", "export_executorch_int8",
           "int8_quantizer", "executorch_version"]

MAX_BATCH = 64  # the dynamic batch axis's upper bound (XNNPACK plans memory for it)
INT8_SCHEME = {
    "tool": "torchao.quantization.pt2e (prepare_pt2e / convert_pt2e) + executorch XNNPACKQuantizer",
    "ops": ["linear", "conv2d"],
    "weights": "int8, per channel, symmetric",
    "activations": "int8, per tensor, affine, static (HistogramObserver)",
    "float": "LayerNorm, softmax, GELU, attention matmuls, residual adds",
}


def executorch_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ExecuTorch and torch.export print deprecation notes and lowering logs: not the user's business."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export(module: Any, img_size: int) -> Any:
    """``torch.export`` of ``module`` (in eval mode) with a dynamic batch axis."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # batch 2 rather than 1: nothing in the trace can specialize on a singleton batch
    example = (torch.zeros(2, 3, img_size, img_size),)
    return torch.export.export(module, example, dynamic_shapes=({0: batch},), strict=False)


def _lower(exported: Any, path: Path) -> dict[str, Any]:
    """XNNPACK-lowered program written to ``path``; the lowering settings."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return {"api": "executorch.exir.to_edge_transform_and_lower", "partitioner": "XnnpackPartitioner",
            "delegate": "XNNPACK", "dynamic_batch": [1, MAX_BATCH], "executorch": executorch_version()}


def export_executorch_fp32(graph: Any, path: str | Path, img_size: int) -> dict[str, Any]:
    """``graph`` (``export.onnx.EmbeddingModel``) as an FP32 XNNPACK program at ``path``."""
    with _quiet():
        return _lower(_export(graph.eval(), img_size), Path(path))


def int8_quantizer(per_channel: bool = True, ops: tuple[str, ...] = ("linear", "conv2d")) -> Any:
    """The XNNPACK quantizer of the chosen scheme (:data:`INT8_SCHEME`): static int8, weights
    per channel, only ``ops`` quantized (``benchmarks/executorch_int8.py`` measures others)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
    quantizer = XNNPACKQuantizer()
    for op in ops:
        quantizer.set_operator_type(getattr(torch.ops.aten, op).default, config)
    return quantizer


def export_executorch_int8(graph: Any, path: str | Path, img_size: int, images: np.ndarray, *,
                           quantizer: Any = None, on_batch: Callable[[int], None] | None = None,
                           batch_size: int = 8) -> dict[str, Any]:
    """PT2E static INT8 of ``graph``, calibrated on ``images`` (N, 3, H, W) float32, lowered
    to XNNPACK at ``path``. ``quantizer`` defaults to :func:`int8_quantizer`. Returns the
    settings (for the manifest)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(images) == 0:
        raise EdgeDistillError("INT8 calibration needs at least one image")
    with _quiet():
        module = _export(graph.eval(), img_size).module()
        prepared = prepare_pt2e(module, quantizer if quantizer is not None else int8_quantizer())
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
                prepared(torch.from_numpy(chunk))
                if on_batch is not None:
                    on_batch(len(chunk))
        lowering = _lower(_export(convert_pt2e(prepared), img_size), Path(path))
    return {**INT8_SCHEME, "calibration_images": int(len(images)), "lowering": lowering}


def _entry(precision: str, settings: dict[str, Any]) -> dict[str, Any]:
    runtime = {"library": "executorch", "version": executorch_version(), "delegate": "XNNPACK",
               "python": "executorch.runtime.Runtime (loads libtorch)",
               "android": "org.pytorch.executorch.Module", "ios": "ExecuTorch.framework Module"}
    return {"format": "executorch", "precision": precision, "runtime": runtime, **settings}


def build_variant(name: str, build: Build) -> None:
    path = build.work / f"{name}.pte"
    if name == "executorch_fp32":
        settings = export_executorch_fp32(build.graph, path, build.img_size)
        build.add(name, path, _entry("fp32", {"lowering": settings}))
        return
    calib = build.calibration_images
    assert calib is not None, "INT8 variants are built after the calibration images are loaded"
    advance = build.task(f"calibrating {name} (PT2E)", total=len(calib))
    settings = export_executorch_int8(build.graph, path, build.img_size, calib, on_batch=advance)
    build.add(name, path, _entry("int8", {"quantization": dict(settings, calibration=build.calibration)}))
