"""Export: ONNX, OpenVINO IR, INT8 post-training quantization, parity and accuracy gates, and
the bundle (``export/<name>/`` with ``manifest.json``) an app embeds (SPEC §7, §8).

``export_bundle`` is the stage function the CLI and ``pipeline`` call. Importing this package
is cheap: torch, onnx, onnxruntime, openvino and nncf load only when a stage runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_bundle", "GateFailed", "VARIANTS", "FORMATS", "FORMAT_VERSION", "summary_rows"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgedistill.export import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'edgedistill.export' has no attribute {name!r}")
