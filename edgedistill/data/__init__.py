"""Datasets and loaders: image folders (labeled or not), the embedded digits, transforms.

``data.path`` is ``"digits"`` (the embedded set; write ``./digits`` for a folder of that
name) or a folder: a split layout (``train/`` and ``val/``) or a folder that is itself the
train split (see :mod:`edgedistill.data.folders` for the exact rules). Items are
``(transform(img), label)`` with label -1 for unlabeled folders.

Determinism: the train loader's sampler yields ``(index, seed)`` pairs, the seed a function
of (run seed, epoch, index), and the dataset seeds the transform's RNG with it. An augmented
batch therefore depends only on the seed, the epoch and the batch position: not on
``num_workers``, worker scheduling, the world size, or how the run got there (a resumed run
sees the batches an uninterrupted one would).
"""

from __future__ import annotations

import random
import signal
import sys
import traceback
from itertools import islice
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from edgedistill.config import Config
from edgedistill.data.digits import DigitsDataset
from edgedistill.data.mixing import MixedDataset, MixSettings
from edgedistill.data.folders import IMG_EXTENSIONS, BadImagesError, ImageFolderDataset, has_split_layout, resolve_split
from edgedistill.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_preprocessing,
    eval_transform,
    resize_size,
    sample_seed,
    train_transform,
)
from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.preprocessing import load_rgb, to_rgb

ImageDataset = ImageFolderDataset | DigitsDataset

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS", "BadImagesError", "DigitsDataset",
    "ImageDataset", "ImageFolderDataset", "SeededSampler", "build_dataset", "build_eval_loader",
    "build_knn_loaders", "build_train_loader", "check_same_classes", "eval_preprocessing",
    "eval_transform", "has_split_layout", "load_rgb", "resize_size", "resolve_split",
    "seed_worker", "to_rgb", "train_transform",
]


def build_dataset(
    path: str,
    split: str,
    transform: Callable | None = None,
    *,
    val_path: str = "",
    img_size: int = 32,
    max_bad_images: int = 10,
    require_labels: bool = False,
    scan: bool = True,
) -> ImageDataset:
    """The ``split`` ("train" | "val") of ``path``; ``val_path`` (if set) supplies the val split.

    ``img_size`` only sets the size digits are upscaled to. ``scan=False`` skips the
    construction-time ``verify()`` of every file (bad files are then only caught on load).
    The result has ``classes``, ``labels`` (list[int]), ``paths`` (None for digits),
    ``labeled`` and ``bad_images``; ``transform=None`` yields RGB PIL images.
    """
    folder = resolve_split(path, split, val_path)
    if folder == "digits":
        return DigitsDataset(split, transform, img_size=img_size)
    return ImageFolderDataset(
        folder, transform, max_bad_images=max_bad_images, require_labels=require_labels, scan=scan
    )


class SeededSampler(Sampler):
    """Shuffled, rank-sharded indices, each paired with its own augmentation seed.

    Wraps a :class:`DistributedSampler` (``num_replicas=1, rank=0`` outside DDP; from
    ``torch.distributed`` when left ``None``), so the order is a function of (seed, epoch).
    Call ``set_epoch(epoch)`` before every epoch, on every rank, or each epoch repeats the
    previous order and views. ``set_epoch(epoch, start=k)`` skips the first ``k`` samples of
    this rank's order: resume mid-epoch with ``start = batches_done * batch_size``.
    Yields ``(index, seed)``.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        seed: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        # drop_last=False pads the order with up to world_size - 1 repeats so ranks stay in step.
        self.sampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
        )
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in islice(iter(self.sampler), self.start, None):
            yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)


def ignore_interrupts(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn`` of every loader: workers ignore Ctrl-C. A terminal sends it
    to the whole process group, and a worker that died of it first made the main process fail on
    the lost batch (a traceback, not exit 130); the main process stops its workers when it
    handles the interrupt. A worker also stays quiet when the interrupted main process drops a
    batch's file-descriptor hand-over half-way (its resource-sharer thread's connection error
    would print a traceback under the main process's one-line message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous = sys.excepthook
    sys.excepthook = lambda *exc: _quiet_resource_sharer(previous, *exc)


def _quiet_resource_sharer(report: Callable, exc_type: type, exc: BaseException, tb: Any) -> None:
    """A worker's ``sys.excepthook`` (which multiprocessing's resource-sharer thread reports
    through): a broken connection there is the main process going away; the rest is reported."""
    frames = traceback.extract_tb(tb)
    if issubclass(exc_type, (EOFError, OSError)) and frames and frames[0].filename.endswith("resource_sharer.py"):
        return
    report(exc_type, exc, tb)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` of training loaders: seed numpy and ``random`` from the
    worker's torch seed (itself derived from the loader's generator), for transforms that use
    them unseeded; Ctrl-C ignored as in ``ignore_interrupts``."""
    ignore_interrupts(worker_id)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(
    cfg: Config,
    transform: Callable,
    *,
    distributed: bool,
    seed: int,
    drop_last: bool = True,
    mix: MixSettings | None = None,
) -> DataLoader:
    """Shuffled loader over the train split of ``cfg.data.path``; batches ``(B, ...)`` per process.

    ``loader.sampler`` is a :class:`SeededSampler`: call ``loader.sampler.set_epoch(epoch)``
    each epoch. Workers are persistent (no re-fork per epoch) and seeded from a generator
    seeded with ``seed``. ``mix`` blends each image with a partner (mixup / cutmix, per sample).
    """
    d = cfg.data
    dataset = build_dataset(d.path, "train", transform, img_size=d.img_size, max_bad_images=d.max_bad_images)
    if mix is not None and mix.enabled:
        dataset = MixedDataset(dataset, mix)
    replicas = {} if distributed else {"num_replicas": 1, "rank": 0}
    sampler = SeededSampler(dataset, seed, **replicas)
    if drop_last and len(sampler) < d.batch_size:
        per = "per process " if distributed else ""
        raise EdgeDistillError(
            f"{dataset.root}: {len(sampler)} images {per}is fewer than one batch (data.batch_size={d.batch_size})"
        )
    return DataLoader(
        dataset,
        batch_size=d.batch_size,
        sampler=sampler,
        num_workers=d.num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=d.num_workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def build_eval_loader(
    path: str,
    split: str,
    img_size: int,
    batch_size: int,
    num_workers: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    val_path: str = "",
    require_labels: bool = False,
    max_bad_images: int = 10,
) -> DataLoader:
    """Ordered, unshuffled loader with :func:`eval_transform`; yields ``(B, 3, S, S), (B,)``.

    Use the labels the loader yields: a file that fails to decode is replaced by the next
    readable one, so ``dataset.labels[i]`` can differ from the i-th yielded label.
    """
    dataset = build_dataset(
        path, split, eval_transform(img_size, mean, std), val_path=val_path, img_size=img_size,
        max_bad_images=max_bad_images, require_labels=require_labels,
    )
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=torch.cuda.is_available(), drop_last=False, worker_init_fn=ignore_interrupts,
    )


def check_same_classes(bank: ImageDataset, query: ImageDataset) -> None:
    """k-NN compares label indices, so both splits must have the same class list."""
    if bank.classes != query.classes:
        only_bank = sorted(set(bank.classes) - set(query.classes))
        only_query = sorted(set(query.classes) - set(bank.classes))

        def names(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (", ..." if len(xs) > 5 else "") if xs else "none"

        raise EdgeDistillError(
            f"k-NN needs the same classes in train ({bank.root}, {len(bank.classes)}) and val "
            f"({query.root}, {len(query.classes)}): only in train: {names(only_bank)}; only in val: {names(only_query)}"
        )


def build_knn_loaders(cfg: Config, *, batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """(train bank, val queries) eval loaders for k-NN, both labeled, same classes.

    The pair comes from ``data.path`` (its train split, and its val split or ``data.val_path``);
    when ``data.val_path`` is itself a split layout, it supplies both (a labeled benchmark
    beside unlabeled training images).
    """
    d = cfg.data
    path, val_path = d.path, d.val_path
    if val_path and val_path != "digits" and has_split_layout(val_path):
        path, val_path = val_path, ""
    common = dict(
        img_size=d.img_size, batch_size=batch_size or cfg.eval.batch_size, num_workers=d.num_workers,
        mean=d.mean, std=d.std, require_labels=True, max_bad_images=d.max_bad_images,
    )
    bank = build_eval_loader(path, "train", **common)
    query = build_eval_loader(path, "val", val_path=val_path, **common)
    check_same_classes(bank.dataset, query.dataset)
    return bank, query
