"""ExecuTorch: the ``executorch`` format (``.pte`` programs lowered to the XNNPACK delegate,
FP32 and PT2E INT8), the Python runtime for the gates, ``eval`` and the deploy example
(``engine``; it loads libtorch), and its bench rows. Opt-in: ``edgedistill[executorch]``."""

from __future__ import annotations

from edgedistill.runtime.base import Runtime, Variant

__all__ = ["RUNTIME", "ExecuTorch"]


class ExecuTorch(Runtime):
    name = "executorch"
    label = "ExecuTorch"
    format = "executorch"
    reads = ("executorch",)
    suffixes = (".pte",)
    variants = (
        Variant("executorch_fp32", "fp32"),
        Variant("executorch_int8", "int8", option="int8", bytes_per_param=1.3),
    )
    embedder_class = "ExecuTorchEmbedder"
    module = "executorch"
    build_modules = ("torchao",)
    extra = "executorch"
    packages = ("executorch", "torchao")
    default = False
    engine = "edgedistill.runtime.executorch.engine"
    cpu_target = "XNNPACK"
    marker = "P"
    int8_recipe = "PT2E static INT8, calibrated on --calib images"


RUNTIME = ExecuTorch()
