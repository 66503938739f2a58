"""Offline evaluation of an opened model on labeled train/val folders: k-NN and linear probe.

The functions behind ``edgedistill eval knn`` / ``eval linear``, usable from Python (the export
stage's accuracy gate calls :func:`evaluate_knn` once per variant with the same
:class:`Splits`, so the folders are scanned once)::

    from edgedistill.eval import open_model, load_splits, evaluate_knn
    model = open_model("export/vit_tiny_cifar", variant="onnx-int8")
    splits = load_splits(data="../shared/data/cifar10-subset", img_size=model.img_size)
    result = evaluate_knn(model, splits)   # result["top1"], result["per_k"][20]["top1"], ...
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from edgedistill.errors import EdgeDistillError
from edgedistill.eval.models import EvalModel, spec_transform

__all__ = ["Splits", "load_splits", "embed_split", "evaluate_knn", "evaluate_linear", "TimedEmbedder",
           "dataset_order", "gather_in_order"]


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
                "num_val": len(self.query), "num_classes": len(self.bank.classes), "classes": self.classes}


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


class TimedEmbedder:
    """Wraps an embedder and accumulates the seconds spent inside it (model time, no I/O)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "embedder")
        self.dim = getattr(inner, "dim", None)
        self.seconds = 0.0
        self.images = 0

    def embed(self, batch: Any) -> Any:
        started = time.perf_counter()
        out = self.inner.embed(batch)
        self.seconds += time.perf_counter() - started
        self.images += len(out)
        return out


class _TimedTorchEmbedder(TimedEmbedder):
    def embed_torch(self, batch: Any) -> Any:
        started = time.perf_counter()
        out = self.inner.embed_torch(batch)
        if out.is_cuda:  # kernels are asynchronous: wait for them inside the timed region
            import torch

            torch.cuda.synchronize(out.device)
        self.seconds += time.perf_counter() - started
        self.images += len(out)
        return out


def timed(embedder: Any) -> TimedEmbedder:
    return _TimedTorchEmbedder(embedder) if hasattr(embedder, "embed_torch") else TimedEmbedder(embedder)


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def dataset_order(n: int, world: int) -> Any:
    """Where item i of a dataset sits in the rank-ordered all-gather of ``indices[rank::world]``
    shards; ``gathered[dataset_order(n, world)]`` restores dataset order."""
    import torch

    gathered = torch.cat([torch.arange(r, n, world) for r in range(world)])
    order = torch.empty(n, dtype=torch.long)
    order[gathered] = torch.arange(n)
    return order


def gather_in_order(feats: Any, labels: Any, n: int) -> tuple[Any, Any]:
    """All-gather ``indices[rank::world]`` shards (CPU tensors) back into dataset order, on CPU."""
    import torch
    import torch.distributed as dist

    from edgedistill.eval.knn import gather_features

    _, world = _rank_world()
    if world == 1:
        return feats, labels
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    feats, labels = gather_features(feats.to(comm), labels.to(comm))
    order = dataset_order(n, world).to(feats.device)
    return feats[order].cpu(), labels[order].cpu()


def embed_split(model: EvalModel, dataset: Any, *, batch_size: int = 128, num_workers: int = 2,
                progress: bool = True, description: str = "features") -> tuple[Any, Any, dict[str, float]]:
    """Features (N, D) float32, labels (N,) and timing of one dataset under ``model``'s
    preprocessing (the dataset's transform is replaced by the model's).

    Under ``torch.distributed`` (e.g. ``torchrun ... -m edgedistill eval knn``) each rank
    embeds ``indices[rank::world]`` and the shards are all-gathered in dataset order, so every
    rank returns what one process would; the timing then covers all ranks (images summed,
    seconds of the slowest rank).
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from edgedistill.eval.knn import extract_features

    if batch_size < 1:
        raise EdgeDistillError(f"--batch-size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise EdgeDistillError(f"--workers must be >= 0, got {num_workers}")
    dataset.transform = spec_transform(model.preprocessing)
    rank, world = _rank_world()
    shard = dataset if world == 1 else Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=model.backend == "torch" and torch.cuda.is_available(), drop_last=False)
    embedder = timed(model.embedder)
    started = time.perf_counter()
    if len(shard):
        feats, labels = extract_features(embedder, loader, progress=progress and rank == 0,
                                         description=description)
    else:  # fewer images than processes
        feats, labels = torch.zeros(0, model.dim or 0), torch.zeros(0, dtype=torch.long)
    wall = time.perf_counter() - started
    stats = {"images": float(feats.shape[0]), "seconds": wall, "model_seconds": embedder.seconds}
    if world > 1:
        import torch.distributed as dist

        feats, labels = gather_in_order(feats, labels, len(dataset))
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        count = torch.tensor([stats["images"]], dtype=torch.float64, device=dev)
        slowest = torch.tensor([stats["seconds"], stats["model_seconds"]], dtype=torch.float64, device=dev)
        dist.all_reduce(count)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        stats = {"images": float(count[0]), "seconds": float(slowest[0]), "model_seconds": float(slowest[1])}
    stats["images"] = int(stats["images"])
    return feats, labels, stats


def _extraction(stats: Sequence[dict[str, float]], batch_size: int, threads: int | None) -> dict[str, Any]:
    images = sum(s["images"] for s in stats)
    seconds = sum(s["seconds"] for s in stats)
    model_seconds = sum(s["model_seconds"] for s in stats)
    return {"images": images, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9),
            "model_seconds": model_seconds, "model_images_per_s": images / max(model_seconds, 1e-9),
            "batch_size": batch_size, "threads": threads}


def _features(model: EvalModel, splits: Splits, batch_size: int, num_workers: int,
              progress: bool) -> tuple[Any, Any, Any, Any, list[dict[str, float]]]:
    if splits.img_size != model.img_size and "digits" in (str(splits.bank.root), str(splits.query.root)):
        raise EdgeDistillError(f"the splits were loaded for {splits.img_size}-px digits, the model takes "
                               f"{model.img_size} px: load_splits(..., img_size={model.img_size})")
    train_f, train_y, s1 = embed_split(model, splits.bank, batch_size=batch_size, num_workers=num_workers,
                                       progress=progress, description="train features")
    val_f, val_y, s2 = embed_split(model, splits.query, batch_size=batch_size, num_workers=num_workers,
                                   progress=progress, description="val features")
    return train_f, train_y, val_f, val_y, [s1, s2]


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
    from edgedistill.eval.knn import HEADLINE_K, knn_classify

    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise EdgeDistillError(f"k values must be >= 1, got {ks}")
    headline = HEADLINE_K if HEADLINE_K in ks else ks[0]
    train_f, train_y, val_f, val_y, stats = _features(model, splits, batch_size, num_workers, progress)
    result = knn_classify(train_f, train_y, val_f, len(splits.classes), ks=ks, temperature=temperature,
                          chunk_size=chunk_size, val_labels=val_y, headline_k=headline)
    out: dict[str, Any] = {
        "task": "knn",
        "model": model.describe(),
        "data": splits.describe(),
        "ks": ks,
        "temperature": float(temperature),
        "headline_k": headline,
        "top1": result["top1"],
        "top5": result["top5"],
        "per_k": {str(k): v for k, v in result["per_k"].items()},
        "extraction": _extraction(stats, batch_size, threads),
    }
    if with_predictions:
        out["predictions"] = [int(p) for p in result["predictions"]]
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
    from edgedistill.eval.linear import linear_probe

    train_f, train_y, val_f, val_y, stats = _features(model, splits, batch_size, num_workers, progress)
    probe = linear_probe(train_f.numpy(), train_y.numpy(), val_f.numpy(), val_y.numpy(),
                         num_classes=len(splits.classes), cs=cs, max_iter=max_iter, seed=seed)
    return {"task": "linear", "model": model.describe(), "data": splits.describe(), **probe,
            "extraction": _extraction(stats, batch_size, threads)}
