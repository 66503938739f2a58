"""Evaluation: features and weighted k-NN (DINO protocol) over any embedder, opening
``--model`` as torch or through a runtime of the registry, offline k-NN and linear probe,
online k-NN, attention maps."""

from edgedistill.eval.evaluate import Splits, evaluate_knn, evaluate_linear, load_splits
from edgedistill.eval.features import (
    DEFAULT_KS,
    HEADLINE_K,
    TorchEmbedder,
    embed_split,
    extract_features,
    knn_classify,
    knn_of,
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
    "knn_classify",
    "knn_of",
    "load_splits",
    "open_model",
    "spec_transform",
]
