"""Weighted k-NN prediction in numpy (no torch), for deploy examples and on-device checks.

Same protocol and tie rules as ``edgedistill.eval.knn.knn_classify``: cosine similarity of
L2-normalized features, the top-k neighbours (larger similarity first, then lower gallery
index) vote with weight exp(sim / T), and the class with most votes wins (lower class index
on equal votes). The gallery is compared whole against each query chunk, so memory is
O(chunk_size x gallery size): meant for galleries an app carries, not ImageNet.
"""

from __future__ import annotations

import numpy as np

from edgedistill.errors import EdgeDistillError

__all__ = ["knn_predict", "l2_normalize"]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit length (as torch.nn.functional.normalize)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(norms).all():
        raise EdgeDistillError("k-NN: features contain NaN or inf")
    return x / np.maximum(norms, np.float32(eps))


def _top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, columns) of the k largest per row, by value desc then column asc."""
    n = sims.shape[1]
    kth = np.partition(sims, n - k, axis=1)[:, n - k, None]  # the k-th largest value
    above = sims > kth
    equal = sims == kth
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (equal & (np.cumsum(equal, axis=1) <= need))
    cols = np.nonzero(keep)[1].reshape(-1, k)  # ascending columns per row
    vals = np.take_along_axis(sims, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(cols, order, axis=1)


def knn_predict(
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    query_feats: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    return_votes: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predicted class (Nq,) int64 of each query (Nq, D) by weighted k-NN over the gallery
    (Ng, D) with labels (Ng,). ``k`` is clamped to Ng. With ``return_votes`` also the
    (Nq, C) float64 vote totals."""
    gallery = l2_normalize(gallery_feats)
    queries = np.asarray(query_feats, dtype=np.float32)
    labels = np.asarray(gallery_labels).reshape(-1).astype(np.int64)
    if gallery.ndim != 2 or queries.ndim != 2 or gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {gallery.shape} and {queries.shape}")
    if gallery.shape[0] == 0:
        raise EdgeDistillError("k-NN needs a non-empty gallery")
    if labels.shape[0] != gallery.shape[0]:
        raise ValueError(f"{gallery.shape[0]} gallery features but {labels.shape[0]} labels")
    if k < 1 or temperature <= 0:
        raise EdgeDistillError(f"k-NN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise EdgeDistillError(f"gallery labels must lie in [0, {num_classes})")
    k = min(int(k), gallery.shape[0])

    preds = np.empty(queries.shape[0], dtype=np.int64)
    all_votes = np.empty((queries.shape[0], num_classes), dtype=np.float64) if return_votes else None
    for start in range(0, queries.shape[0], chunk_size):
        q = l2_normalize(queries[start:start + chunk_size])
        vals, cols = _top_k(q @ gallery.T, k)
        # as eval.knn: exp in float64 rounded to float32, summed in float64 (exact, order-free)
        weights = np.exp(vals.astype(np.float64) / temperature).astype(np.float32).astype(np.float64)
        neighbour_labels = labels[cols]
        votes = np.zeros((q.shape[0], num_classes), dtype=np.float64)
        rows = np.arange(q.shape[0])
        for j in range(k):
            votes[rows, neighbour_labels[:, j]] += weights[:, j]
        preds[start:start + q.shape[0]] = votes.argmax(axis=1)  # first maximum: lower class
        if all_votes is not None:
            all_votes[start:start + q.shape[0]] = votes
    return (preds, all_votes) if all_votes is not None else preds
