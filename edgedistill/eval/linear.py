"""Linear probe: multinomial logistic regression (scikit-learn) on frozen, L2-normalized features.

With several regularization strengths ``C``, the strength is chosen on a stratified held-out
part of the training features (never on the validation set), then the probe is refit on all
training features and scored once on validation.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError

__all__ = ["linear_probe"]


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        from edgedistill.eval.knn import NONFINITE_CAUSES

        raise EdgeDistillError(f"linear probe: features contain NaN or inf: the model is broken ({NONFINITE_CAUSES})")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int) -> Any:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=float(c), max_iter=int(max_iter), random_state=seed)
    with warnings.catch_warnings():
        # not converging within max_iter still yields a usable probe; it is reported, not printed
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def _topk(clf: Any, x: np.ndarray, y: np.ndarray, k: int) -> float:
    proba = clf.predict_proba(x)  # columns follow clf.classes_
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    hits = (clf.classes_[order] == y[:, None]).any(axis=1)
    return 100.0 * float(hits.mean())


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    num_classes: int | None = None,
    cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
    max_iter: int = 1000,
    holdout: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on (Nt, D) train features, score on (Nv, D) val features.

    Returns ``{"top1", "top5" (None below 5 classes), "C", "c_search": {C: held-out top-1},
    "num_train", "num_val", "num_classes", "iterations"}``; accuracies in percent.
    """
    cs = [float(c) for c in cs]
    if not cs or min(cs) <= 0:
        raise EdgeDistillError(f"linear probe: C values must be > 0, got {cs}")
    x_train, x_val = _normalize(train_features), _normalize(val_features)
    y_train = np.asarray(train_labels).reshape(-1).astype(np.int64)
    y_val = np.asarray(val_labels).reshape(-1).astype(np.int64)
    if len(np.unique(y_train)) < 2:
        raise EdgeDistillError("linear probe needs at least 2 classes in the training features")
    num_classes = int(num_classes or int(max(y_train.max(), y_val.max())) + 1)

    search: dict[str, float] = {}
    best_c = cs[0]
    if len(cs) > 1:
        from sklearn.model_selection import train_test_split

        _, counts = np.unique(y_train, return_counts=True)
        stratify = y_train if counts.min() >= 2 else None
        try:
            x_fit, x_hold, y_fit, y_hold = train_test_split(x_train, y_train, test_size=holdout,
                                                            random_state=seed, stratify=stratify)
        except ValueError:  # too few samples for a stratified split
            x_fit, x_hold, y_fit, y_hold = train_test_split(x_train, y_train, test_size=holdout,
                                                            random_state=seed)
        if len(np.unique(y_fit)) >= 2:
            for c in cs:
                clf = _fit(x_fit, y_fit, c, max_iter, seed)
                search[f"{c:g}"] = 100.0 * float((clf.predict(x_hold) == y_hold).mean())
            # ties: the smaller C (stronger regularization) wins
            best_c = max(cs, key=lambda c: (search[f"{c:g}"], -c))
    clf = _fit(x_train, y_train, best_c, max_iter, seed)
    top1 = 100.0 * float((clf.predict(x_val) == y_val).mean())
    top5 = _topk(clf, x_val, y_val, 5) if num_classes >= 5 else None
    return {"top1": top1, "top5": top5, "C": best_c, "c_search": search, "num_train": int(len(y_train)),
            "num_val": int(len(y_val)), "num_classes": num_classes,
            "iterations": int(np.max(clf.n_iter_)), "max_iter": int(max_iter)}
