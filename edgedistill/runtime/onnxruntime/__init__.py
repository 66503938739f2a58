"""ONNX Runtime: the ``onnx`` format (a plain graph of standard operators and a graph with
fused attention, FP32 and dynamic INT8 of each), sessions for the gates, ``eval`` and the
deploy examples (``engine``), and its bench rows on any execution provider."""

from __future__ import annotations

from typing import Any

from edgedistill.runtime.base import Runtime, Variant

__all__ = ["RUNTIME", "OnnxRuntime"]

# --device names -> the execution providers that serve them, in preference order
PROVIDER_ALIASES = {
    "cuda": ["CUDAExecutionProvider"],
    "gpu": ["CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider", "MIGraphXExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider"], "trt": ["TensorrtExecutionProvider"],
    "rocm": ["ROCMExecutionProvider"], "migraphx": ["MIGraphXExecutionProvider"],
    "dml": ["DmlExecutionProvider"], "directml": ["DmlExecutionProvider"],
    "coreml": ["CoreMLExecutionProvider"], "xnnpack": ["XnnpackExecutionProvider"],
    "npu": ["QNNExecutionProvider", "VitisAIExecutionProvider"], "qnn": ["QNNExecutionProvider"],
    "openvino": ["OpenVINOExecutionProvider"],
}


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    label = "ONNX Runtime"
    format = "onnx"
    reads = ("onnx",)
    suffixes = (".onnx",)
    variants = (
        Variant("onnx_fp32", "fp32"),
        Variant("onnx_fused_fp32", "fp32"),
        Variant("onnx_int8", "int8", option="int8", bytes_per_param=1.3),
        Variant("onnx_fused_int8", "int8", option="int8", bytes_per_param=1.3),
    )
    embedder_class = "OnnxEmbedder"
    module = "onnxruntime"
    build_modules = ("onnx",)
    packages = ("onnxruntime", "onnxruntime-gpu", "onnx")
    engine = "edgedistill.runtime.onnxruntime.engine"
    cpu_target = "CPUExecutionProvider"
    accelerators = True
    device_noun = "providers"
    marker = "s"
    int8_recipe = "dynamic INT8, no calibration, validated one image per call"

    def unbuildable(self, variant: Variant, model: Any) -> str | None:
        if "fused" not in variant.name:
            return None
        from edgedistill.runtime.onnxruntime.fused import fusable

        why = fusable(model)
        return f"no fused-attention ONNX graph: {why}" if why else None

    def probe(self) -> tuple[list[str] | None, str | None]:
        try:
            import onnxruntime as ort

            return list(ort.get_available_providers()), None
        except Exception as exc:  # ImportError, or a broken wheel
            return None, f"{type(exc).__name__}: {exc}"

    def target(self, device: str, found: list[str]) -> tuple[str | None, str | None]:
        if device == "cpu":
            return self.cpu_target, None
        candidates = PROVIDER_ALIASES.get(device.lower(), []) + [p for p in found if p.lower() == device.lower()]
        match = next((p for p in candidates if p in found), None)
        return (match, None) if match else (None, f"no ONNX Runtime provider for {device}")


RUNTIME = OnnxRuntime()
