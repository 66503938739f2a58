"""Offline evaluation of an opened model on labeled train/val folders: k-NN and linear probe.

The functions behind ``edgedistill eval knn`` / ``eval linear``, usable from Python. Features
and k-NN come from :mod:`edgedistill.eval.features`, the code the export's accuracy gate and
the online k-NN of training use too::

    from edgedistill.eval import open_model, load_splits, evaluate_knn
    model = open_model("export/vit_tiny_cifar", variant="onnx-int8")
    splits = load_splits(data="../shared/data/cifar10-subset", img_size=model.img_size)
    result = evaluate_knn(model, splits)   # result["top1"], result["per_k"][20]["top1"], ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.eval.models import EvalModel, spec_transform

__all__ = ["Splits", "load_splits", "evaluate_knn", "evaluate_linear"]


@dataclass
class Splits:
    """A labeled bank (train) and query (val) dataset with the same classes."""

    bank: Any
    query: Any
    img_size: int

    @property
    def classes(self) -> list[str]:
        return list(self.bank.classes)

    def describe(self) -> dict[str, Any]:
        return {"train": str(self.bank.root), "val": str(self.query.root), "num_train": len(self.bank),
                "num_val": len(self.query), "num_classes": len(self.bank.classes), "classes": self.classes,
                # unreadable or oversized images left out when the folders were scanned
                "skipped_images": {"train": len(getattr(self.bank, "bad_images", [])),
                                   "val": len(getattr(self.query, "bad_images", []))}}


def resolve_data(train: str | None, val: str | None, data: str | None) -> tuple[str, str]:
    """``--data`` or ``--train``/``--val`` -> (path, val_path) in ``build_dataset`` terms."""
    from edgedistill.data import has_split_layout

    if data and (train or val):
        raise EdgeDistillError("pass either --data DIR or --train DIR --val DIR, not both")
    if val and not train:
        raise EdgeDistillError("--val needs --train (the labeled bank of the k-NN)")
    path = data or train
    if not path:
        raise EdgeDistillError("no data: pass --data DIR (a folder with train/ and val/, or 'digits') "
                               "or --train DIR --val DIR")
    if not val and path != "digits" and not has_split_layout(path):
        from pathlib import Path

        if not Path(path).expanduser().is_dir():
            raise EdgeDistillError(f"data folder not found: {path}")
        flag = "--data" if data else "--train"
        raise EdgeDistillError(f"{flag} {path} has no train/ and val/ subfolders: pass --val DIR (a labeled "
                               "folder) or a folder with train/<class>/... and val/<class>/...")
    return path, val or ""


def load_splits(train: str | None = None, val: str | None = None, data: str | None = None, *,
                img_size: int = 32, max_bad_images: int = 10) -> Splits:
    """Scan the labeled bank and query folders once (unlabeled folders are an error).

    ``img_size`` only matters for the embedded ``digits`` (the size they are upscaled to);
    the model's own transform is attached when its features are extracted.
    """
    from edgedistill.data import build_dataset, check_same_classes

    path, val_path = resolve_data(train, val, data)
    common = dict(img_size=img_size, max_bad_images=max_bad_images, require_labels=True)
    bank = build_dataset(path, "train", None, **common)
    query = build_dataset(path, "val", None, val_path=val_path, **common)
    check_same_classes(bank, query)
    return Splits(bank, query, img_size)


def _extraction(stats: dict[str, float], batch_size: int, threads: int | None) -> dict[str, Any]:
    images, seconds, model_seconds = stats["images"], stats["seconds"], stats["model_seconds"]
    return {"images": images, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9),
            "model_seconds": model_seconds, "model_images_per_s": images / max(model_seconds, 1e-9),
            "batch_size": batch_size, "threads": threads}


def _attach(model: EvalModel, splits: Splits) -> None:
    """Give both splits the model's own preprocessing."""
    if splits.img_size != model.img_size and "digits" in (str(splits.bank.root), str(splits.query.root)):
        raise EdgeDistillError(f"the splits were loaded for {splits.img_size}-px digits, the model takes "
                               f"{model.img_size} px: load_splits(..., img_size={model.img_size})")
    transform = spec_transform(model.preprocessing)
    splits.bank.transform = splits.query.transform = transform


def evaluate_knn(
    model: EvalModel,
    splits: Splits,
    *,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    batch_size: int = 128,
    num_workers: int = 2,
    chunk_size: int = 4096,
    progress: bool = True,
    with_predictions: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Weighted k-NN (DINO protocol) of ``model`` on ``splits``; a JSON-ready dict:

    ``{"task": "knn", "model", "data", "ks", "temperature", "headline_k", "top1", "top5",
    "per_k": {"<k>": {"k_used", "top1", "top5"}}, "extraction": {"images", "seconds",
    "images_per_s", "model_seconds", "model_images_per_s", ...}}`` plus ``"predictions"``
    (headline k, one class index per val image) with ``with_predictions``. Accuracies in %.
    """
    from edgedistill.eval.features import knn_of

    _attach(model, splits)
    result = knn_of(model.embedder, splits.bank, splits.query, num_classes=len(splits.classes), ks=ks,
                    temperature=temperature, chunk_size=chunk_size, batch_size=batch_size,
                    num_workers=num_workers, progress=progress, with_predictions=with_predictions)
    ks = [int(k) for k in ks]
    out: dict[str, Any] = {"task": "knn", "model": model.describe(), "data": splits.describe(), "ks": ks,
                           "temperature": float(temperature), "headline_k": result["headline_k"],
                           "top1": result["top1"], "top5": result["top5"], "per_k": result["per_k"],
                           "extraction": _extraction(result["extraction"], batch_size, threads)}
    if with_predictions:
        out["predictions"] = result["predictions"]
    return out


def evaluate_linear(
    model: EvalModel,
    splits: Splits,
    *,
    cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
    max_iter: int = 1000,
    batch_size: int = 128,
    num_workers: int = 2,
    progress: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Linear probe (logistic regression on frozen L2-normalized features); JSON-ready dict
    with ``top1`` (``top5`` for 5+ classes), the chosen ``C`` and the extraction timing."""
    from edgedistill.eval.features import embed_split
    from edgedistill.eval.linear import linear_probe

    _attach(model, splits)
    common = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    train_f, train_y, s1 = embed_split(model.embedder, splits.bank, description="train features", **common)
    val_f, val_y, s2 = embed_split(model.embedder, splits.query, description="val features", **common)
    probe = linear_probe(np.asarray(train_f), np.asarray(train_y), np.asarray(val_f), np.asarray(val_y),
                         num_classes=len(splits.classes), cs=cs, max_iter=max_iter, seed=seed)
    stats = {key: s1[key] + s2[key] for key in s1}
    return {"task": "linear", "model": model.describe(), "data": splits.describe(), **probe,
            "extraction": _extraction(stats, batch_size, threads)}
