"""The two export gates (SPEC §7), judged through the runtime embedders an app uses.

* Parity: a variant's outputs against the torch model's on the same real images, at batch 1
  (image by image) and batch 8: the smallest per-image cosine similarity and the largest
  absolute difference. Gated (``min_cosine``) for FP32 variants; reported for the others,
  which the accuracy gate judges instead.
* Accuracy: weighted k-NN top-1 (DINO protocol, k = 20) of every variant on a labeled
  train/val pair, against the torch FP32 figure; a drop above ``max_drop`` points fails.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = ["PARITY_BATCHES", "compare", "parity_of", "knn_of", "parity_failures", "knn_failures"]

PARITY_BATCHES = (1, 8)


def compare(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Row-wise cosine similarity (min and mean) and max-abs difference of (N, D) arrays."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise RuntimeError(f"output shape {out.shape} differs from the torch model's {ref.shape}")
    if not np.isfinite(out).all():
        return {"min_cosine": float("nan"), "mean_cosine": float("nan"), "max_abs": float("inf")}
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = (ref * out).sum(axis=1) / np.maximum(norms, 1e-30)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs": float(np.abs(ref - out).max())}


def _run_batches(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(embed(images[i:i + batch]), dtype=np.float32)
                           for i in range(0, len(images), batch)])


def parity_of(embedders: dict[str, Any], references: dict[int, dict[str, np.ndarray]], images: np.ndarray,
              batches: Sequence[int] = PARITY_BATCHES) -> dict[str, Any]:
    """Parity of one variant: ``embedders`` maps output name -> embedder of that output,
    ``references[batch][output]`` the torch outputs for ``images`` run at that batch size.

    Returns ``{"min_cosine", "max_abs", "outputs": {name: {"batch_1": {...}, "batch_8": {...}}}}``
    with the headline figures the worst over outputs and batch sizes."""
    outputs: dict[str, Any] = {}
    worst_cos, worst_abs = float("inf"), 0.0
    for name, embedder in embedders.items():
        per_batch = {}
        for batch in batches:
            figures = compare(references[batch][name], _run_batches(embedder.embed, images, batch))
            per_batch[f"batch_{batch}"] = figures
            worst_cos = min(worst_cos, figures["min_cosine"]) if np.isfinite(figures["min_cosine"]) else float("nan")
            worst_abs = max(worst_abs, figures["max_abs"])
        outputs[name] = per_batch
    return {"min_cosine": worst_cos, "max_abs": worst_abs, "images": int(len(images)),
            "batch_sizes": list(batches), "outputs": outputs}


def parity_failures(parity: dict[str, dict[str, Any]], min_cosine: float) -> list[str]:
    """One phrase per gated variant below ``min_cosine`` (NaN fails too)."""
    failed = []
    for variant, figures in parity.items():
        if not figures.get("gated"):
            continue
        cos = figures["min_cosine"]
        if not (cos >= min_cosine):
            failed.append(f"{variant} cosine {cos:.7f} < {min_cosine:g} (max-abs {figures['max_abs']:.3g})")
    return failed


def knn_of(embedder: Any, bank: Iterable[Any], queries: Iterable[Any], *, num_classes: int,
           description: str, progress: bool = True, ks: Sequence[int] = (10, 20, 100, 200),
           temperature: float = 0.07) -> dict[str, Any]:
    """k-NN (DINO protocol) of one embedder: bank features from ``bank``, queries from
    ``queries`` (both iterables of (images, labels) batches). Returns top-1/top-5 (percent)
    at the headline k = 20 and per k."""
    from edgedistill.eval.knn import HEADLINE_K, extract_features, knn_classify

    train_feats, train_labels = extract_features(embedder, bank, progress=progress,
                                                 description="k-NN bank   ")
    val_feats, val_labels = extract_features(embedder, queries, progress=progress,
                                             description="k-NN queries")
    result = knn_classify(train_feats, train_labels, val_feats, num_classes, ks=ks, temperature=temperature,
                          val_labels=val_labels, headline_k=HEADLINE_K)
    return {
        "top1": result["top1"],
        "top5": result["top5"],
        "k": result["headline_k"],
        "k_used": result["headline_k_used"],
        "per_k": {str(k): {"top1": v["top1"], "top5": v["top5"], "k_used": v["k_used"]}
                  for k, v in result["per_k"].items()},
    }


def knn_failures(knn: dict[str, dict[str, Any]], max_drop: float) -> list[str]:
    """One phrase per variant whose k-NN top-1 dropped by more than ``max_drop`` points."""
    failed = []
    for variant, figures in knn.items():
        checks = [(variant, figures)]
        if "f32_fallback" in figures:  # a variant gated under two precision hints
            checks = [(f"{variant} ({figures['inference_precision_hint']})", figures),
                      (f"{variant} (f32 fallback)", figures["f32_fallback"])]
        for label, result in checks:
            if not (result["drop"] <= max_drop):
                failed.append(f"{label} lost {result['drop']:.2f} points of k-NN top-1 "
                              f"({result['top1']:.2f}% vs torch {result['reference_top1']:.2f}%, max {max_drop:g})")
    return failed
