"""The embedded default dataset: scikit-learn's ``load_digits`` (1797 8x8 images, 10 classes).

Nothing to download, so the quickstart and the tests run anywhere. Each 8x8 image (values
0..16) is mapped to 0..255 uint8 and upscaled with PIL **bicubic** to the configured size,
3 identical channels. Bicubic rather than nearest: nearest turns every source pixel into a
flat square, so with patch size = upscale factor a patch holds one constant value and random
crops only shift block edges; bicubic gives smooth strokes with structure inside each patch,
closer to what a ViT sees in real images. The split is stratified and fixed: per class, a
``RandomState(0)`` permutation puts ``round(0.2 * n_class)`` images into val (359 val, 1438 train).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from edgedistill.data.transforms import seeded_call, split_item
from edgedistill.errors import EdgeDistillError

VAL_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8) in 0..255, targets int64 (1797,))."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EdgeDistillError("the embedded 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    """Sorted indices into ``load_digits`` for ``split`` ("train" or "val"); fixed, stratified."""
    _, targets = _digits()
    rng = np.random.RandomState(SPLIT_SEED)  # legacy RandomState: its stream never changes
    val = []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        val.extend(rng.permutation(members)[: round(VAL_FRACTION * len(members))])
    is_val = np.zeros(len(targets), dtype=bool)
    is_val[val] = True
    if split == "train":
        return np.flatnonzero(~is_val)
    if split == "val":
        return np.flatnonzero(is_val)
    raise EdgeDistillError(f"unknown data split '{split}' (expected train or val)")


class DigitsDataset:
    """Items ``(transform(pil_rgb img_size x img_size), label)``; ``paths`` is ``None``."""

    root = "digits"
    paths = None

    def __init__(self, split: str, transform: Callable | None = None, *, img_size: int = 32) -> None:
        images, targets = _digits()
        self.indices = split_indices(split)
        self._images = images[self.indices]
        self.labels: list[int] = targets[self.indices].tolist()
        self.classes = [str(c) for c in range(10)]
        self.img_size = img_size
        self.transform = transform
        self.bad_images: list[str] = []

    @property
    def labeled(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"DigitsDataset({len(self)} images, {self.img_size}px, 10 classes)"

    def load(self, index: int) -> tuple[Image.Image, int]:
        small = Image.fromarray(self._images[index])
        img = small.resize((self.img_size, self.img_size), Image.Resampling.BICUBIC).convert("RGB")
        return img, self.labels[index]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, int]:
        index, seed = split_item(item)
        img, label = self.load(index)
        return seeded_call(self.transform, img, seed), label


def write_digits(out: Path, img_size: int = 32) -> dict[str, int]:
    """The embedded digits as a labeled image folder ``out/{train,val}/<digit>/<index>.png``,
    the very images (and split) ``data.path=digits`` trains and validates on, at ``img_size``:
    what the deploy examples take as their gallery. Written atomically; an existing ``out`` is
    refused. Returns the image count per split."""
    from edgedistill.utils import atomic_directory, check_new, disk_errors

    out = Path(out)
    check_new(out)
    counts = {}
    with atomic_directory(out) as tmp, disk_errors(out, "the digits folder"):
        for split in ("train", "val"):
            data = DigitsDataset(split, img_size=img_size)
            for label in data.classes:
                (tmp / split / label).mkdir(parents=True)
            for i, index in enumerate(data.indices):
                image, label = data.load(i)
                image.save(tmp / split / str(label) / f"{int(index):04d}.png")
            counts[split] = len(data)
    return counts
