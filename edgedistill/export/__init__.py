"""Export: a distilled student -> a gated bundle (``export/<name>/`` with ``manifest.json``).

``bundle.export_bundle`` is the stage function the CLI and ``pipeline`` call; it reads as its
steps: ``plan`` (inputs, the variants the registry's runtimes build for the formats asked for),
``onnx`` (the torch graph and its FP32 ONNX export, which several runtimes start from),
``variants`` (each built by its runtime, ``runtime.registry``), ``gates`` (parity and k-NN
accuracy), ``recovery`` (accuracy-controlled INT8), ``manifest`` (writing the bundle's
contract). Importing this package is cheap: torch and the runtimes' converters load only when
a stage runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_bundle", "ExportOptions", "GateFailed", "VARIANTS", "FORMATS", "summary_rows"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgedistill.export import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'edgedistill.export' has no attribute {name!r}")
