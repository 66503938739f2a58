"""Features and k-NN, once: ``eval knn``, the online k-NN of training and the export's
accuracy gate all call :func:`knn_of`.

An *embedder* maps a float32 NCHW batch (already preprocessed) to (B, D) embeddings:
:class:`TorchEmbedder` for a timm ViT, the runtime embedders (``runtime.embedders``) for every
runtime of the registry. A *split* is a labeled dataset whose items are ``(model input, label)``.

* :func:`extract_features` embeds batches with a rich progress bar (rate and ETA).
* :func:`embed_split` embeds a whole split; under ``torch.distributed`` each rank embeds
  ``indices[rank::world]`` and the shards are gathered back in dataset order, so every rank
  returns what one process would.
* :func:`knn_of` is both splits plus the weighted k-NN (DINO protocol): the chunked torch
  k-NN (``eval.knn``) where torch is installed, the numpy one (``runtime.knn``) where it is
  not; the two give the same figures (a test pins it).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Iterable, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError

__all__ = ["TorchEmbedder", "TimedEmbedder", "extract_features", "embed_split", "knn_of", "knn_classify",
           "InMemorySplit", "DEFAULT_KS", "HEADLINE_K"]

DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)
HEADLINE_K = 20


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


class TorchEmbedder:
    """The embedder of a timm ViT in torch: ``forward_features(x)[:, 0]``, the CLS token after
    the final norm (the tensor the ONNX export produces). The model's train/eval mode is
    restored after each call, so the training loop can use it mid-run."""

    def __init__(self, model: Any, device: Any = "cpu", amp: bool = False, name: str = "torch") -> None:
        import torch

        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # forward_features lives on the wrapped model
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.amp = bool(amp)
        self.name = name
        self.dim = int(getattr(model, "num_features", 0) or getattr(model, "embed_dim"))

    def embed_torch(self, batch: Any) -> Any:
        """(B, 3, H, W) tensor -> (B, D) float32 on the model's device."""
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model.forward_features(batch.to(self.device, non_blocking=True))[:, 0]
            return out.float()
        finally:
            self.model.train(was_training)

    def embed(self, batch: Any) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32 numpy."""
        import torch

        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return self.embed_torch(batch).cpu().numpy()


class TimedEmbedder:
    """Wraps an embedder and adds up the seconds spent inside it (model time, no I/O)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "embedder")
        self.dim = getattr(inner, "dim", None)
        self.seconds = 0.0

    def __call__(self, images: Any) -> Any:
        """One batch -> (B, D) float32 (a CPU tensor with torch, else numpy)."""
        started = time.perf_counter()
        if hasattr(self.inner, "embed_torch") and not isinstance(images, np.ndarray):
            out = self.inner.embed_torch(images)
            if out.is_cuda:  # kernels are asynchronous: wait for them inside the timed region
                import torch

                torch.cuda.synchronize(out.device)
            out = out.cpu()
        else:
            if not isinstance(images, np.ndarray):
                images = images.numpy()
            out = np.asarray(self.inner.embed(np.ascontiguousarray(images, dtype=np.float32)), dtype=np.float32)
            if _has_torch():
                import torch

                out = torch.from_numpy(out)
        self.seconds += time.perf_counter() - started
        return out


def _progress(enabled: bool, description: str, total: int | None) -> Any:
    from edgedistill.progress import progress_bar

    bar = progress_bar(enabled=enabled, rate="img/s", eta=True)
    return bar, bar.add_task(description, total=total, rate="")


def extract_features(embedder: Any, batches: Iterable[Any], progress: bool = True,
                     description: str = "features") -> tuple[Any, Any]:
    """Embed every ``(images, labels)`` batch of ``batches`` (labels may be absent).

    Returns (features (N, D) float32, labels (N,) int64 or None): CPU tensors where torch is
    installed, numpy arrays otherwise.
    """
    timed = embedder if isinstance(embedder, TimedEmbedder) else TimedEmbedder(embedder)
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    feats: list[Any] = []
    labels: list[np.ndarray] = []
    seen, started = 0, time.perf_counter()
    bar, task = _progress(progress, f"{description} ({timed.name})", total)
    with bar:
        for batch in batches:
            images, targets = (batch[0], batch[1] if len(batch) > 1 else None) if isinstance(batch, (tuple, list)) \
                else (batch, None)
            out = timed(images)
            feats.append(out)
            if targets is not None:
                labels.append(np.asarray(targets).reshape(-1).astype(np.int64))
            seen += out.shape[0]
            bar.update(task, advance=1, rate=f"{seen / max(time.perf_counter() - started, 1e-9):,.0f} img/s")
    if not feats:
        raise EdgeDistillError("no images to embed: the split is empty")
    if labels and sum(len(lab) for lab in labels) != sum(f.shape[0] for f in feats):
        raise ValueError("some batches came without labels")
    if _has_torch():
        import torch

        features = torch.cat([torch.as_tensor(f) for f in feats])
        return features, (torch.from_numpy(np.concatenate(labels)) if labels else None)
    return np.concatenate(feats), (np.concatenate(labels) if labels else None)


def _numpy_batches(dataset: Any, indices: Sequence[int], batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        yield np.stack([np.asarray(x, dtype=np.float32) for x, _ in items]), np.array([y for _, y in items])


def _batches(dataset: Any, indices: list[int], batch_size: int, num_workers: int, pin: bool) -> Any:
    """Ordered batches of ``dataset[indices]``: a DataLoader where torch is installed."""
    if isinstance(dataset, InMemorySplit):
        return dataset.batches(indices, batch_size)
    if not _has_torch():
        return _Sized(_numpy_batches(dataset, indices, batch_size), -(-len(indices) // batch_size))
    from torch.utils.data import DataLoader, Subset

    from edgedistill.data import ignore_interrupts

    shard = dataset if len(indices) == len(dataset) else Subset(dataset, indices)
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin,
                      drop_last=False, worker_init_fn=ignore_interrupts)


class _Sized:
    def __init__(self, items: Iterable[Any], length: int) -> None:
        self.items, self.length = items, length

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return self.length


def embed_split(embedder: Any, dataset: Any, *, batch_size: int = 128, num_workers: int = 0,
                progress: bool = True, description: str = "features") -> tuple[Any, Any, dict[str, float]]:
    """Features (N, D), labels (N,) and timing of one split, in dataset order.

    Under ``torch.distributed`` each rank embeds ``indices[rank::world]`` and the shards are
    all-gathered in dataset order; the timing then covers all ranks (images summed, seconds of
    the slowest rank).
    """
    if batch_size < 1:
        raise EdgeDistillError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise EdgeDistillError(f"data loader workers must be >= 0, got {num_workers}")
    distributed = _has_torch() and _world() > 1
    indices = _shard(len(dataset)) if distributed else list(range(len(dataset)))
    timed = TimedEmbedder(embedder)
    started = time.perf_counter()
    if indices:
        pin = hasattr(embedder, "embed_torch") and getattr(embedder, "device", None) is not None \
            and getattr(embedder.device, "type", "cpu") == "cuda"
        feats, labels = extract_features(timed, _batches(dataset, indices, batch_size, num_workers, pin),
                                         progress=progress and _rank() == 0, description=description)
    else:  # fewer images than processes
        import torch

        feats, labels = torch.zeros(0, timed.dim or 0), torch.zeros(0, dtype=torch.long)
    stats = {"images": float(feats.shape[0]), "seconds": time.perf_counter() - started,
             "model_seconds": timed.seconds}
    if distributed:
        from edgedistill.distributed import gather_in_order, max_across_ranks, sum_across_ranks

        feats, labels = gather_in_order(feats, labels, len(dataset))
        (images,) = sum_across_ranks([stats["images"]])
        seconds, model_seconds = max_across_ranks([stats["seconds"], stats["model_seconds"]])
        stats = {"images": images, "seconds": seconds, "model_seconds": model_seconds}
    stats["images"] = int(stats["images"])
    return feats, labels, stats


def _world() -> int:
    from edgedistill.distributed import rank_world

    return rank_world()[1]


def _rank() -> int:
    if not _has_torch():
        return 0
    from edgedistill.distributed import rank_world

    return rank_world()[0]


def _shard(n: int) -> list[int]:
    from edgedistill.distributed import shard_indices

    return shard_indices(n)


def knn_classify(train_features: Any, train_labels: Any, val_features: Any, num_classes: int | None = None,
                 ks: Sequence[int] = DEFAULT_KS, temperature: float = 0.07, chunk_size: int = 4096,
                 **kwargs: Any) -> dict[str, Any]:
    """Weighted k-NN (DINO protocol): ``eval.knn.knn_classify`` (chunked, torch) where torch is
    installed, else ``runtime.knn.knn_classify`` (numpy). Same arguments, same result."""
    if _has_torch():
        from edgedistill.eval.knn import knn_classify as classify
    else:
        from edgedistill.runtime.knn import knn_classify as classify  # type: ignore[assignment]
    return classify(train_features, train_labels, val_features, num_classes, ks=ks, temperature=temperature,
                    chunk_size=chunk_size, **kwargs)


def knn_of(embedder: Any, bank: Any, queries: Any, *, num_classes: int, ks: Sequence[int] = DEFAULT_KS,
           temperature: float = 0.07, chunk_size: int = 4096, batch_size: int = 128, num_workers: int = 0,
           progress: bool = True, label: str = "", device: Any = None,
           with_predictions: bool = False) -> dict[str, Any]:
    """k-NN of ``embedder`` with ``bank`` as the labeled gallery and ``queries`` as the
    validation split (items: ``(model input, label)``).

    Returns ``{"top1", "top5", "headline_k", "k_used", "per_k": {"<k>": {"k_used", "top1",
    "top5"}}, "extraction": {"images", "seconds", "model_seconds"}}`` (accuracies in %) plus
    ``"predictions"`` (one class index per query at the headline k) with ``with_predictions``.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise EdgeDistillError(f"k values must be >= 1, got {ks}")
    headline = HEADLINE_K if HEADLINE_K in ks else ks[0]
    prefix = f"{label}: " if label else ""
    common = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    train_f, train_y, s1 = embed_split(embedder, bank, description=f"{prefix}k-NN bank   ", **common)
    val_f, val_y, s2 = embed_split(embedder, queries, description=f"{prefix}k-NN queries", **common)
    result = knn_classify(train_f, train_y, val_f, num_classes, ks=ks, temperature=temperature,
                          chunk_size=chunk_size, val_labels=val_y, headline_k=headline, device=device)
    out: dict[str, Any] = {
        "top1": result["top1"], "top5": result["top5"], "headline_k": headline,
        "k_used": result["headline_k_used"], "temperature": float(temperature),
        "per_k": {str(k): {"k_used": v["k_used"], "top1": v["top1"], "top5": v["top5"]}
                  for k, v in result["per_k"].items()},
        "extraction": {key: s1[key] + s2[key] for key in ("images", "seconds", "model_seconds")},
    }
    if with_predictions:
        out["predictions"] = [int(p) for p in result["predictions"]]
    return out


class InMemorySplit:
    """A split decoded and preprocessed once, then served from memory: the export gate embeds
    the same images with every variant. ``dataset[i] -> (input, label)`` like the original."""

    def __init__(self, dataset: Any, *, progress: bool = False, description: str = "images") -> None:
        from edgedistill.progress import progress_bar

        self.classes = list(getattr(dataset, "classes", []))
        self.root = getattr(dataset, "root", None)
        inputs, labels = [], []
        with progress_bar(enabled=progress, rate=None, eta=True) as bar:
            task = bar.add_task(description, total=len(dataset))
            for i in range(len(dataset)):
                x, y = dataset[i]
                inputs.append(np.asarray(x, dtype=np.float32))
                labels.append(int(y))
                bar.advance(task)
        self.inputs = np.stack(inputs) if inputs else np.zeros((0,), np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.inputs[i], int(self.labels[i])

    def batches(self, indices: list[int], batch_size: int) -> _Sized:
        idx = np.asarray(indices, dtype=np.int64)
        chunks = ((self.inputs[idx[s:s + batch_size]], self.labels[idx[s:s + batch_size]])
                  for s in range(0, len(idx), batch_size))
        return _Sized(chunks, -(-len(idx) // batch_size))

    @staticmethod
    def fits(dataset: Any, crop: Sequence[int], cap_bytes: int = 2 << 30) -> bool:
        """Whether ``dataset`` preprocessed to ``crop`` fits in ``cap_bytes`` of memory."""
        h, w = crop
        return len(dataset) * 3 * h * w * 4 <= cap_bytes
