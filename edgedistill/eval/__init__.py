"""Evaluation: weighted k-NN (DINO protocol) over any embedder, feature extraction, opening
``--model`` as torch/ONNX Runtime/OpenVINO, offline k-NN and linear probe, online k-NN,
attention maps."""

from edgedistill.eval.evaluate import Splits, embed_split, evaluate_knn, evaluate_linear, load_splits
from edgedistill.eval.knn import (
    DEFAULT_KS,
    HEADLINE_K,
    TorchEmbedder,
    extract_features,
    gather_features,
    knn_accuracy,
    knn_classify,
)
from edgedistill.eval.models import EvalModel, open_model, spec_transform

__all__ = [
    "DEFAULT_KS",
    "HEADLINE_K",
    "EvalModel",
    "Splits",
    "TorchEmbedder",
    "embed_split",
    "evaluate_knn",
    "evaluate_linear",
    "extract_features",
    "gather_features",
    "knn_accuracy",
    "knn_classify",
    "load_splits",
    "open_model",
    "spec_transform",
]
