"""LiteRT (the TFLite runtime, what Android apps ship): the ``litert`` format (``.tflite``
models converted by litert-torch, FP32 and INT8 by ai-edge-quantizer), the
``ai_edge_litert`` interpreter for the gates, ``eval`` and the deploy example (``engine``,
XNNPACK), and its bench rows. Opt-in: ``edgedistill[litert]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgedistill.runtime.base import Build, Runtime, Variant

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
    module = "ai_edge_litert"
    build_modules = ("litert_torch", "ai_edge_quantizer")
    extra = "litert"
    packages = ("ai-edge-litert", "litert-torch", "ai-edge-quantizer")
    default = False
    engine = "edgedistill.runtime.litert.engine"
    cpu_target = "XNNPACK"
    marker = "v"

    def build(self, variant: Variant, build: Build) -> None:
        from edgedistill.runtime.litert.build import build_variant

        build_variant(variant.name, build)

    def embedder(self, path: Path, *, threads: int | None = None, output: str = "embedding",
                 outputs: Sequence[str] = ("embedding",), name: str | None = None,
                 entry: dict[str, Any] | None = None, **settings: Any) -> Any:
        from edgedistill.runtime.litert.embedder import LiteRtEmbedder

        return LiteRtEmbedder(path, threads=threads, output=output, outputs=outputs, name=name)

    def input_size(self, embedder: Any) -> int | None:
        shape = embedder.input_shape
        return shape[2] if len(shape) == 4 and shape[1] == 3 and shape[2] == shape[3] else None


RUNTIME = LiteRt()
