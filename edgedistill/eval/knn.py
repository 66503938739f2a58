"""Weighted k-NN classification on frozen features (DINO protocol), chunked on both sides.

Features are L2-normalized, compared by cosine similarity, and the top-k training neighbours
of each validation sample vote for their class with weight ``exp(sim / T)``. Similarities are
computed block by block (``chunk_size`` validation rows x ``bank_chunk_size`` training rows)
with a running top-k merged across bank blocks, so the peak extra memory is
O(chunk_size x bank_chunk_size) whatever the size of the bank (ImageNet: 1.28M x 384).

Ties are resolved deterministically:
  * neighbours: larger similarity first, then lower training (bank) index;
  * classes: more votes first, then lower class index.

``eval.features.knn_of`` feeds it the features of any embedder (torch, or any runtime of
the registry), so every backend is judged by this one function; ``runtime.knn`` is its numpy
twin for machines without torch (same tie rules, same figures).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgedistill.errors import EdgeDistillError

__all__ = ["knn_classify", "knn_accuracy", "DEFAULT_KS", "HEADLINE_K"]

DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)
HEADLINE_K = 20


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.as_tensor(x)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _topk_lowest_index(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of ``values`` (R, M), ties broken by lower column.

    Returns (values (R, k), columns (R, k)) ordered by value descending, then column ascending.
    ``torch.topk`` picks arbitrarily among equal values at the k-th place; rows where a tie
    straddles that boundary (rare with real features, common with duplicates) are redone
    exactly with a mask + cumulative count.
    """
    top_vals, top_cols = values.topk(k, dim=1, largest=True, sorted=False)
    kth = top_vals.min(dim=1, keepdim=True).values  # (R, 1)
    ambiguous = ((values >= kth).sum(dim=1) > k).nonzero().flatten()
    if ambiguous.numel():
        sub, thr = values[ambiguous], kth[ambiguous]
        above = sub > thr
        need = k - above.sum(dim=1, keepdim=True)
        equal = sub == thr
        keep = above | (equal & (equal.cumsum(dim=1) <= need))
        # exactly k kept per row; nonzero() lists them row-major, so columns come out ascending
        top_cols[ambiguous] = keep.nonzero()[:, 1].view(-1, k)
    top_cols = top_cols.sort(dim=1).values
    top_vals = values.gather(1, top_cols)
    top_vals, order = top_vals.sort(dim=1, descending=True, stable=True)
    return top_vals, top_cols.gather(1, order)


def _vote_weights(sims: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(sim / T) as float32 values held in float64.

    exp is evaluated in float64 and rounded to float32, so equal similarities get equal
    weights wherever they sit (vectorized and scalar float32 exp can differ by one ulp), and
    the float64 vote sums of such weights are exact in any order (GPU scatter_add included):
    equal votes are really equal and the class tie rule applies.
    """
    if sims.device.type == "mps":  # no float64 there
        return (sims / temperature).exp()
    return (sims.double() / temperature).exp().float().double()


NONFINITE_CAUSES = ("a damaged model file, which a bundle's sha256 check catches unless --no-verify was given, "
                    "or a training run that diverged")


def _check_finite(norms: torch.Tensor, what: str) -> None:
    # a NaN row has a NaN norm and an inf row an inf norm: checking norms covers both
    if not bool(torch.isfinite(norms).all()):
        raise EdgeDistillError(f"k-NN: {what} features contain NaN or inf: the model is broken ({NONFINITE_CAUSES})")


def _nearest_neighbours(
    train_features: torch.Tensor,
    query: torch.Tensor,
    k: int,
    bank_chunk_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarities (Q, k) and bank indices (Q, k) of normalized ``query`` (Q, D)
    against the whole bank, walking the bank in blocks and merging a running top-k.

    Exact under the tie rule: an entry of the global top-k (by value desc, index asc) is in
    the top-k of its own block, and the running best (lower indices) is merged in front of
    the block's best, so "lower column" keeps meaning "lower bank index".
    """
    num_train = train_features.shape[0]
    best_vals: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for start in range(0, num_train, bank_chunk_size):
        bank = train_features[start:start + bank_chunk_size].to(device, torch.float32, non_blocking=True)
        _check_finite(torch.linalg.vector_norm(bank, dim=1), "training")
        sims = query @ F.normalize(bank, dim=1).T  # (Q, B): the only block-sized allocation
        vals, cols = _topk_lowest_index(sims, min(k, sims.shape[1]))
        del sims
        idx = cols + start
        if best_vals is not None:
            merged_vals = torch.cat([best_vals, vals], dim=1)
            merged_idx = torch.cat([best_idx, idx], dim=1)
            vals, cols = _topk_lowest_index(merged_vals, min(k, merged_vals.shape[1]))
            idx = merged_idx.gather(1, cols)
        best_vals, best_idx = vals, idx
    assert best_vals is not None and best_idx is not None
    return best_vals, best_idx


def _checked(train_features: Any, train_labels: Any, val_features: Any, num_classes: int | None, ks: Sequence[int],
             temperature: float, chunk_size: int, bank_chunk_size: int | None, val_labels: Any,
             device: Any) -> tuple[Any, ...]:
    """knn_classify's inputs as tensors, checked: one-line errors for what a user can get wrong."""
    if num_classes is not None and not isinstance(num_classes, (int, np.integer)):
        raise TypeError("num_classes must be an int (pass ground truth as val_labels=...)")
    if temperature <= 0:
        raise EdgeDistillError(f"k-NN temperature must be > 0, got {temperature}")
    if chunk_size < 1 or (bank_chunk_size is not None and bank_chunk_size < 1):
        raise EdgeDistillError("k-NN chunk sizes must be >= 1")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise EdgeDistillError(f"k-NN needs k values >= 1, got {ks}")

    train_features = _as_tensor(train_features, "train_features")
    val_features = _as_tensor(val_features, "val_features")
    if train_features.ndim != 2 or val_features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got {tuple(train_features.shape)} "
                         f"and {tuple(val_features.shape)}")
    num_train, dim = train_features.shape
    num_val = val_features.shape[0]
    if num_train == 0:
        raise EdgeDistillError("k-NN needs at least one training feature (the bank is empty)")
    if num_val == 0:
        raise EdgeDistillError("k-NN needs at least one validation feature")
    if val_features.shape[1] != dim:
        raise ValueError(f"feature dims differ: bank {dim}, validation {val_features.shape[1]}")

    compute = torch.device(device) if device is not None else train_features.device
    labels = _as_tensor(train_labels, "train_labels").reshape(-1).to(compute, torch.long)
    if labels.numel() != num_train:
        raise ValueError(f"{num_train} training features but {labels.numel()} labels")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    num_classes = int(num_classes)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise EdgeDistillError(f"k-NN training labels must lie in [0, {num_classes}), "
                               f"got [{int(labels.min())}, {int(labels.max())}]")
    truth = None
    if val_labels is not None:
        truth = _as_tensor(val_labels, "val_labels").reshape(-1).to(torch.long).cpu()
        if truth.numel() != num_val:
            raise ValueError(f"{num_val} validation features but {truth.numel()} labels")
        if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= num_classes):
            raise EdgeDistillError(f"k-NN validation labels must lie in [0, {num_classes})")

    return train_features, val_features, labels, truth, num_classes, ks, compute, num_train, num_val


def _ranked_classes(neighbour_labels: torch.Tensor, weights: torch.Tensor, ks: Sequence[int],
                    num_classes: int) -> dict[int, torch.Tensor]:
    """(Q, max_k) neighbour labels and vote weights -> {k: (Q, <=5) classes, best first} on the CPU."""
    ranked: dict[int, torch.Tensor] = {}
    for k in ks:
        votes = torch.zeros(neighbour_labels.shape[0], num_classes, device=weights.device, dtype=weights.dtype)
        votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
        # stable descending sort: on equal votes the lower class index comes first
        ranked[k] = votes.sort(dim=1, descending=True, stable=True).indices[:, :5].cpu()
    return ranked


def knn_classify(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    val_features: torch.Tensor | np.ndarray,
    num_classes: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    chunk_size: int = 4096,
    *,
    val_labels: torch.Tensor | np.ndarray | None = None,
    bank_chunk_size: int | None = None,
    headline_k: int = HEADLINE_K,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Weighted k-NN (DINO protocol) of ``val_features`` (Nv, D) against a labeled bank.

    Args:
        train_features: (Nt, D) bank, any float dtype, CPU or GPU, torch or numpy (it is
            never copied whole: blocks are moved and converted on the fly).
        train_labels: (Nt,) ints in [0, num_classes).
        val_features: (Nv, D) queries.
        num_classes: number of classes C (default: max label + 1).
        ks: neighbour counts; each is clamped to Nt (the k used is reported).
        temperature: T in the vote weight exp(sim / T).
        chunk_size: validation rows per block.
        val_labels: (Nv,) ground truth; without it only predictions are returned.
        bank_chunk_size: training rows per block (default ``chunk_size``).
        headline_k: the k whose per-sample predictions are returned (clamped likewise).
        device: where to compute (default: the bank's device).

    Returns:
        ``{"per_k": {k: {"k_used", "top1", "top5"}}, "headline_k", "headline_k_used",
        "top1", "top5", "predictions", "num_train", "num_val", "num_classes", "temperature"}``.
        Accuracies are percentages (None without ``val_labels``); ``top5`` is None when
        C < 5. ``predictions`` is an int64 numpy array (Nv,) for the headline k (drop it
        before writing JSON).
    """
    (train_features, val_features, labels, truth, num_classes, ks, compute, num_train,
     num_val) = _checked(train_features, train_labels, val_features, num_classes, ks, temperature, chunk_size,
                         bank_chunk_size, val_labels, device)
    used = {k: min(k, num_train) for k in ks}
    headline_used = min(int(headline_k), num_train)
    max_k = max(max(used.values()), headline_used)
    bank_chunk = int(bank_chunk_size or chunk_size)
    want_top5 = num_classes >= 5

    correct1 = {k: 0 for k in ks}
    correct5 = {k: 0 for k in ks}
    predictions = torch.empty(num_val, dtype=torch.long)
    distinct = sorted(set(used.values()) | {headline_used})

    for start in range(0, num_val, chunk_size):
        query = val_features[start:start + chunk_size].to(compute, torch.float32, non_blocking=True)
        _check_finite(torch.linalg.vector_norm(query, dim=1), "validation")
        query = F.normalize(query, dim=1)
        sims, idx = _nearest_neighbours(train_features, query, max_k, bank_chunk, compute)
        ranked = _ranked_classes(labels[idx], _vote_weights(sims, temperature), distinct, num_classes)
        predictions[start:start + query.shape[0]] = ranked[headline_used][:, 0]
        if truth is not None:
            target = truth[start:start + query.shape[0], None]
            for k in ks:
                top = ranked[used[k]]
                correct1[k] += int((top[:, :1] == target).sum())
                if want_top5:
                    correct5[k] += int((top[:, :5] == target).any(dim=1).sum())

    def pct(count: int) -> float | None:
        return 100.0 * count / num_val if truth is not None else None

    per_k = {
        k: {"k_used": used[k], "top1": pct(correct1[k]), "top5": pct(correct5[k]) if want_top5 else None}
        for k in ks
    }
    head = per_k.get(headline_k)
    if head is None and truth is not None:
        # headline k not among ks: its accuracy comes straight from its predictions
        top1 = 100.0 * float((predictions == truth).sum()) / num_val
        head = {"top1": top1, "top5": None}
    return {
        "per_k": per_k,
        "headline_k": int(headline_k),
        "headline_k_used": headline_used,
        "top1": head["top1"] if head else None,
        "top5": head["top5"] if head else None,
        "predictions": predictions.numpy(),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_classes": num_classes,
        "temperature": float(temperature),
    }


def knn_accuracy(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    val_features: torch.Tensor | np.ndarray,
    val_labels: torch.Tensor | np.ndarray,
    num_classes: int | None = None,
    k: int = HEADLINE_K,
    temperature: float = 0.07,
    chunk_size: int = 4096,
) -> float:
    """Top-1 k-NN accuracy in percent for one k (the training loop's online metric)."""
    result = knn_classify(train_features, train_labels, val_features, num_classes, ks=(k,),
                          temperature=temperature, chunk_size=chunk_size, val_labels=val_labels,
                          headline_k=k)
    return float(result["per_k"][k]["top1"])
