"""Online k-NN during ``distill`` and ``pretrain`` (every ``knn_every`` epochs).

The training loop calls ``online_knn(backbone, cfg, info)`` on every rank. The labeled bank
(train split of ``data.path``) and queries (val split, or ``data.val_path``) are scanned
once and cached. Features and k-NN are ``eval.features.knn_of``'s: under
``torch.distributed`` each rank embeds ``indices[rank::world]`` of both splits, the shards are
gathered back in dataset order (so ties resolve as in one process), and every rank returns
the figure one process would.

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


def _datasets(cfg: Config, device: torch.device) -> tuple[Any, Any] | str:
    """Cached (bank, query) datasets with the eval transform, or the reason to skip."""
    from edgedistill import distributed as distmod

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
        if isinstance(entry, str) and distmod.rank_world()[0] == 0:
            warnings.warn(f"online k-NN skipped for this run: {entry}", UserWarning, stacklevel=3)
    return _CACHE[key]


def online_knn(backbone: torch.nn.Module, cfg: Config, info: Any = None) -> dict[str, float]:
    """k-NN top-1 (and top-5 with 5+ classes) of ``backbone``'s CLS feature, in percent.

    Args:
        backbone: the timm ViT being trained (train mode is restored afterwards; a DDP
            wrapper is unwrapped).
        cfg: the run's config: ``data.*`` for the folders and transform, ``eval.*`` for
            ``temperature``, ``batch_size``, ``chunk_size``; k is the headline k = 20.
        info: ``distributed.DistInfo`` (its device); None = the backbone's device.
    Returns:
        ``{"knn_top1": float, "knn_top5": float}`` (``knn_top5`` only with 5+ classes), or
        ``{}`` when the data has no labels (warned once).
    """
    from edgedistill.eval.features import HEADLINE_K, TorchEmbedder, knn_of

    module = backbone.module if isinstance(backbone, torch.nn.parallel.DistributedDataParallel) else backbone
    device = info.device if info is not None else next(module.parameters()).device
    data = _datasets(cfg, device)
    if isinstance(data, str):
        return {}
    bank, queries = data
    embedder = TorchEmbedder(module, device=device, amp=device.type == "cuda", name="online")
    # every rank embeds its shard of both splits and gets the gathered whole: the same figures
    result = knn_of(embedder, bank, queries, num_classes=len(bank.classes), ks=(HEADLINE_K,),
                    temperature=cfg.eval.temperature, chunk_size=cfg.eval.chunk_size,
                    batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers, progress=False,
                    device=device)
    scores = {"knn_top1": result["top1"]}
    if result["top5"] is not None:
        scores["knn_top5"] = result["top5"]
    return scores
