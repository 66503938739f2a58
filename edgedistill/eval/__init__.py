"""Evaluation: weighted k-NN (DINO protocol) over any embedder, feature extraction."""

from edgedistill.eval.knn import (
    DEFAULT_KS,
    HEADLINE_K,
    TorchEmbedder,
    extract_features,
    gather_features,
    knn_accuracy,
    knn_classify,
)

__all__ = [
    "DEFAULT_KS",
    "HEADLINE_K",
    "TorchEmbedder",
    "extract_features",
    "gather_features",
    "knn_accuracy",
    "knn_classify",
]
