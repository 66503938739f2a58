"""Weighted k-NN in numpy (no torch): predictions for apps, figures where torch is absent.

Same protocol and tie rules as ``edgedistill.eval.knn.knn_classify``: cosine similarity of
L2-normalized features, the top-k neighbours (larger similarity first, then lower gallery
index) vote with weight exp(sim / T), and the class with most votes wins (lower class index
on equal votes). The gallery is compared whole against each query chunk, so memory is
O(chunk_size x gallery size): meant for galleries an app carries, not ImageNet.
"""

from __future__ import annotations

import numpy as np

from edgedistill.errors import EdgeDistillError

__all__ = ["knn_predict", "knn_classify", "l2_normalize", "compare"]


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


def _rank_classes(votes: np.ndarray) -> np.ndarray:
    """Classes by votes descending, the lower class first on equal votes (top 5)."""
    return np.argsort(-votes, axis=1, kind="stable")[:, :5]


def knn_classify(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                 num_classes: int | None = None, ks: tuple[int, ...] | list[int] = (10, 20, 100, 200),
                 temperature: float = 0.07, chunk_size: int = 1024, *, val_labels: np.ndarray | None = None,
                 headline_k: int = 20, **_: object) -> dict:
    """The numpy twin of ``edgedistill.eval.knn.knn_classify``: same arguments (``device``
    and ``bank_chunk_size`` are accepted and ignored), same result dict, same tie rules."""
    gallery = l2_normalize(np.asarray(train_features, dtype=np.float32))
    labels = np.asarray(train_labels).reshape(-1).astype(np.int64)
    queries = np.asarray(val_features, dtype=np.float32)
    if gallery.shape[0] == 0 or queries.shape[0] == 0:
        raise EdgeDistillError("k-NN needs at least one training and one validation feature")
    if temperature <= 0 or chunk_size < 1 or not ks or min(ks) < 1:
        raise EdgeDistillError(f"k-NN needs k >= 1, temperature > 0 and chunk size >= 1, got {ks}, {temperature}")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    truth = None if val_labels is None else np.asarray(val_labels).reshape(-1).astype(np.int64)
    n_train, n_val = gallery.shape[0], queries.shape[0]
    used = {int(k): min(int(k), n_train) for k in ks}
    headline_used = min(int(headline_k), n_train)
    max_k = max(max(used.values()), headline_used)
    ranked = {k: np.empty((n_val, min(5, num_classes)), np.int64) for k in set(used.values()) | {headline_used}}
    for start in range(0, n_val, chunk_size):
        vals, cols = _top_k(l2_normalize(queries[start:start + chunk_size]) @ gallery.T, max_k)
        weights = np.exp(vals.astype(np.float64) / temperature).astype(np.float32).astype(np.float64)
        neighbour_labels, rows = labels[cols], np.arange(vals.shape[0])
        votes = np.zeros((vals.shape[0], num_classes), dtype=np.float64)
        for j in range(max_k):
            votes[rows, neighbour_labels[:, j]] += weights[:, j]
            if j + 1 in ranked:
                ranked[j + 1][start:start + vals.shape[0]] = _rank_classes(votes)
    predictions = ranked[headline_used][:, 0].copy()

    def pct(hits: np.ndarray) -> float | None:
        return None if truth is None else 100.0 * float(hits.sum()) / n_val

    want_top5 = num_classes >= 5
    per_k = {}
    for k in ks:
        top = ranked[used[int(k)]]
        per_k[int(k)] = {"k_used": used[int(k)], "top1": pct(top[:, 0] == truth) if truth is not None else None,
                         "top5": (pct((top[:, :5] == truth[:, None]).any(axis=1)) if want_top5 and truth is not None
                                  else None)}
    head = per_k.get(int(headline_k)) or {"top1": pct(predictions == truth), "top5": None}
    return {"per_k": per_k, "headline_k": int(headline_k), "headline_k_used": headline_used,
            "top1": head["top1"], "top5": head["top5"], "predictions": predictions, "num_train": n_train,
            "num_val": n_val, "num_classes": num_classes, "temperature": float(temperature)}


def compare(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Row-wise cosine similarity (min and mean) and max-abs difference of (N, D) arrays: how
    far a model's outputs are from a reference's (the parity gate, accuracy control)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise RuntimeError(f"output shape {out.shape} differs from the reference's {ref.shape}")
    if not np.isfinite(out).all():
        return {"min_cosine": float("nan"), "mean_cosine": float("nan"), "max_abs": float("inf")}
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = (ref * out).sum(axis=1) / np.maximum(norms, 1e-30)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs": float(np.abs(ref - out).max())}
