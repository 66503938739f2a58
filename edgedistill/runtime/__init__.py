"""The torch-free side: bundle manifests, numpy preprocessing, ONNX Runtime and OpenVINO
embedders, numpy k-NN. Nothing here imports torch (a test enforces it), so ``bench`` and the
deploy examples run on a device where only onnxruntime (and optionally openvino) is installed.
ONNX Runtime and OpenVINO themselves are imported only when an embedder is created."""

from edgedistill.runtime.embedders import Embedder, OnnxEmbedder, OpenVinoEmbedder, open_embedder
from edgedistill.runtime.knn import knn_predict, l2_normalize
from edgedistill.runtime.manifest import (
    MANIFEST_NAME,
    default_variant,
    read_manifest,
    validate_manifest,
    variant_files,
    variant_path,
)
from edgedistill.runtime.preprocess import load_rgb, preprocess, preprocess_batch, validate_spec

__all__ = [
    "Embedder",
    "MANIFEST_NAME",
    "OnnxEmbedder",
    "OpenVinoEmbedder",
    "default_variant",
    "knn_predict",
    "l2_normalize",
    "load_rgb",
    "open_embedder",
    "preprocess",
    "preprocess_batch",
    "read_manifest",
    "validate_manifest",
    "validate_spec",
    "variant_files",
    "variant_path",
]
