"""Export: a distilled student -> a gated bundle (``export/<name>/`` with ``manifest.json``).

``bundle.export_bundle`` is the stage function the CLI and ``pipeline`` call; it reads as its
steps: ``plan`` (inputs), ``variants`` (one builder per variant: ``onnx``, ``openvino``,
``quantize``), ``gates`` (parity and k-NN accuracy), ``manifest`` (writing the bundle's
contract). Importing this package is cheap: torch, onnx, onnxruntime, openvino and nncf load
only when a stage runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_bundle", "GateFailed", "VARIANTS", "FORMATS", "summary_rows"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgedistill.export import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'edgedistill.export' has no attribute {name!r}")
