"""Online k-NN during ``distill`` and ``pretrain`` (every ``knn_every`` epochs).

The training loop calls ``online_knn(backbone, cfg, info)`` on every rank. The labeled bank
(train split of ``data.path``) and queries (val split, or ``data.val_path``) are scanned
once and cached. Under ``torch.distributed`` each rank embeds ``indices[rank::world]`` of
both; the bank shards are all-gathered (and put back in dataset order, so ties resolve as in
one process), each rank classifies its own queries against the whole bank, and the hit
counts are summed: every rank returns the figure one process would.

Data without labels (or without a val split) is not an error here: online k-NN is skipped
for the rest of the run with a one-line warning, and ``{}`` is returned.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from edgedistill.config import Config
from edgedistill.errors import EdgeDistillError

__all__ = ["online_knn", "clear_online_cache"]

# key -> (bank dataset, query dataset) or the message of why online k-NN is skipped
_CACHE: dict[tuple, Any] = {}


def clear_online_cache() -> None:
    _CACHE.clear()


def _key(cfg: Config) -> tuple:
    d = cfg.data
    return (d.path, d.val_path, d.img_size, tuple(d.mean), tuple(d.std), d.max_bad_images)


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _datasets(cfg: Config, device: torch.device) -> tuple[Any, Any] | str:
    """Cached (bank, query) datasets with the eval transform, or the reason to skip."""
    from edgedistill.train import distributed as distmod

    key = _key(cfg)
    if key not in _CACHE:
        from edgedistill.data import build_knn_loaders

        try:
            # the loaders are only a way to get the datasets; sharded loaders are built per call
            bank, query = build_knn_loaders(cfg, batch_size=cfg.eval.batch_size)
            entry: Any = (bank.dataset, query.dataset)
            ok = True
        except EdgeDistillError as exc:
            entry, ok = str(exc), False
        # every rank must take the same branch, or the gathers below would wait forever
        if not distmod.all_true(ok, device) and ok:
            entry = "the k-NN data failed to load on another process"
        _CACHE[key] = entry
        if isinstance(entry, str) and _rank_world()[0] == 0:
            warnings.warn(f"online k-NN skipped for this run: {entry}", UserWarning, stacklevel=3)
    return _CACHE[key]


def _embed_shard(embedder: Any, dataset: Any, rank: int, world: int, batch_size: int,
                 num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader, Subset

    from edgedistill.eval.knn import extract_features

    indices = list(range(rank, len(dataset), world))
    if not indices:  # fewer images than processes
        return torch.zeros(0, embedder.dim), torch.zeros(0, dtype=torch.long)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, drop_last=False,
                        pin_memory=embedder.device.type == "cuda")
    feats, labels = extract_features(embedder, loader, progress=False)
    return feats, labels


def online_knn(backbone: torch.nn.Module, cfg: Config, info: Any = None) -> dict[str, float]:
    """k-NN top-1 (and top-5 with 5+ classes) of ``backbone``'s CLS feature, in percent.

    Args:
        backbone: the timm ViT being trained (train mode is restored afterwards; a DDP
            wrapper is unwrapped).
        cfg: the run's config: ``data.*`` for the folders and transform, ``eval.*`` for
            ``temperature``, ``batch_size``, ``chunk_size``; k is the headline k = 20.
        info: ``train.distributed.DistInfo`` (its device); None = the backbone's device.
    Returns:
        ``{"knn_top1": float, "knn_top5": float}`` (``knn_top5`` only with 5+ classes), or
        ``{}`` when the data has no labels (warned once).
    """
    import torch.distributed as dist

    from edgedistill.eval.evaluate import dataset_order
    from edgedistill.eval.knn import HEADLINE_K, TorchEmbedder, gather_features, knn_classify

    module = backbone.module if isinstance(backbone, torch.nn.parallel.DistributedDataParallel) else backbone
    device = info.device if info is not None else next(module.parameters()).device
    data = _datasets(cfg, device)
    if isinstance(data, str):
        return {}
    bank_ds, query_ds = data
    rank, world = _rank_world()
    was_training = module.training
    try:
        module.eval()
        embedder = TorchEmbedder(module, device=device, amp=device.type == "cuda", name="online")
        bs, workers = cfg.eval.batch_size, cfg.data.num_workers
        bank_f, bank_y = _embed_shard(embedder, bank_ds, rank, world, bs, workers)
        query_f, query_y = _embed_shard(embedder, query_ds, rank, world, bs, workers)
        if world > 1:
            # NCCL gathers GPU tensors, gloo CPU ones
            comm = device if device.type == "cuda" else torch.device("cpu")
            bank_f, bank_y = gather_features(bank_f.to(comm), bank_y.to(comm))
            order = dataset_order(len(bank_ds), world).to(bank_f.device)
            bank_f, bank_y = bank_f[order], bank_y[order]
        num_classes = len(bank_ds.classes)
        hits = torch.zeros(2, dtype=torch.float64)
        if query_f.shape[0]:
            result = knn_classify(bank_f, bank_y, query_f, num_classes, ks=(HEADLINE_K,),
                                  temperature=cfg.eval.temperature, chunk_size=cfg.eval.chunk_size,
                                  val_labels=query_y, headline_k=HEADLINE_K, device=device)
            entry = result["per_k"][HEADLINE_K]
            n = query_f.shape[0]
            # percentages back to counts (exact: top1 = 100 * count / n)
            hits[0] = round(entry["top1"] * n / 100.0)
            hits[1] = round(entry["top5"] * n / 100.0) if entry["top5"] is not None else 0
        if world > 1:
            hits = hits.to(device if device.type == "cuda" else "cpu")
            dist.all_reduce(hits)
            hits = hits.cpu()
        total = len(query_ds)
        scores = {"knn_top1": 100.0 * float(hits[0]) / total}
        if num_classes >= 5:
            scores["knn_top5"] = 100.0 * float(hits[1]) / total
        return scores
    finally:
        module.train(was_training)
