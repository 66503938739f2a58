"""LiteRT (the TFLite runtime, what Android apps ship): the ``litert`` format (``.tflite``
models converted by litert-torch, FP32 and INT8 by ai-edge-quantizer), the
``ai_edge_litert`` interpreter for the gates, ``eval`` and the deploy example (``engine``,
XNNPACK), and its bench rows. Opt-in: ``edgedistill[litert]``."""

from __future__ import annotations

from edgedistill.runtime.base import Runtime, Variant

__all__ = ["RUNTIME", "LiteRt"]


class LiteRt(Runtime):
    name = "litert"
    label = "LiteRT"
    format = "litert"
    reads = ("litert",)
    suffixes = (".tflite",)
    variants = (
        Variant("litert_fp32", "fp32"),
        Variant("litert_int8", "int8", option="int8", bytes_per_param=1.3),
    )
    embedder_class = "LiteRtEmbedder"
    module = "ai_edge_litert"
    build_modules = ("litert_torch", "ai_edge_quantizer")
    extra = "litert"
    packages = ("ai-edge-litert", "litert-torch", "ai-edge-quantizer")
    default = False
    engine = "edgedistill.runtime.litert.engine"
    cpu_target = "XNNPACK"
    marker = "v"
    int8_recipe = "dynamic-range INT8: no calibration, batch 1"


RUNTIME = LiteRt()
