"""The torch-free side, and every runtime: bundle manifests, numpy preprocessing, numpy k-NN,
the embedders, the bench worker, and the registry of runtimes (``registry``: one package per
runtime beside it). Importing it loads no torch and no runtime library (a test enforces it),
so ``bench`` and the deploy examples run on a device where only the runtimes it uses are
installed; a runtime's library is imported when one of its embedders is created, and only
the build steps ``export`` runs load torch. The names below load on first use, so that the
registry (``edgedistill.runtime.registry``) stays cheap to import for the CLI's help."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Embedder": "embedders", "open_embedder": "embedders",
    "knn_predict": "knn", "l2_normalize": "knn",
    "MANIFEST_NAME": "manifest", "default_variant": "manifest", "read_manifest": "manifest",
    "validate_manifest": "manifest", "variant_files": "manifest", "variant_path": "manifest",
    "OnnxEmbedder": "onnxruntime.embedder", "OpenVinoEmbedder": "openvino.embedder",
    "load_rgb": "preprocessing", "preprocess": "preprocessing", "preprocess_batch": "preprocessing",
    "validate_spec": "preprocessing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"edgedistill.runtime.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'edgedistill.runtime' has no attribute {name!r}")
