"""Image transforms (torchvision v1, PIL input) and per-sample seeding of their randomness.

- :func:`train_transform`: the AttnDistill view (design.md §4), fed identically to teacher and student.
- :func:`eval_transform`: deterministic; the preprocessing every exported model is judged with.
- :func:`eval_preprocessing`: the same, as a plain dict for bundle manifests.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MASK64 = (1 << 64) - 1


def resize_size(img_size: int) -> int:
    """Short side before the center crop: ``round(img_size * 256 / 224)`` (32 -> 37, 224 -> 256).

    ``img_size * 8 / 7`` is never exactly ``k + 0.5``, so every rounding rule agrees.
    """
    return round(img_size * 256 / 224)


def train_transform(
    img_size: int,
    crop_scale: Sequence[float] = (0.2, 1.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    hflip: bool = True,
) -> T.Compose:
    """PIL RGB -> float tensor (3, img_size, img_size): RandomResizedCrop (bicubic) + optional flip."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=T.InterpolationMode.BICUBIC),
        *([T.RandomHorizontalFlip()] if hflip else []),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """PIL RGB -> float tensor (3, img_size, img_size): short side to
    :func:`resize_size` (bicubic, antialiased: PIL input), center crop, /255, normalize."""
    return T.Compose([
        T.Resize(resize_size(img_size), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_preprocessing(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """:func:`eval_transform` as data, for ``manifest.json``.

    To reproduce it: convert to RGB; resize with PIL bicubic so the short side is ``resize``
    and the long side ``int(resize * long / short)`` (torchvision's rule, truncating); center
    crop ``crop`` x ``crop`` (offsets ``int(round((size - crop) / 2))``); multiply by ``scale``;
    subtract ``mean`` and divide by ``std`` per channel; lay out as ``layout``.
    """
    return {
        "resize": resize_size(img_size),
        "crop": img_size,
        "interpolation": "bicubic",
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "channel_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "scale": 1 / 255,
    }


# ----------------------------------------------------------------------------- seeding


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (epoch & _MASK64))
    h = _splitmix64(h ^ (index & _MASK64))
    return h >> 1


def split_item(item: Any) -> tuple[int, int | None]:
    """``i`` or ``(i, seed)`` (what :class:`edgedistill.data.SeededSampler` yields) -> (i, seed)."""
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), None


def seeded_call(transform: Callable | None, img: Any, seed: int | None) -> Any:
    """``transform(img)`` with torch's CPU RNG and ``random`` seeded by ``seed``.

    Both are restored afterwards, so the caller's RNG streams (dropout, model init in the
    main process when num_workers=0) are untouched. Transforms should draw randomness from
    torch or ``random`` (torchvision's do); numpy's global RNG is not covered.
    """
    if transform is None or seed is None:
        return img if transform is None else transform(img)
    py_state = random.getstate()
    # devices=[]: only the CPU generator is forked; transforms run on CPU.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            return transform(img)
        finally:
            random.setstate(py_state)
