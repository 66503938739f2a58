"""Mixed training images for function matching (Beyer et al., "Knowledge distillation: A good
teacher is patient and consistent", CVPR 2022): each training image may be blended with a
second one (mixup) or have a box pasted from it (cutmix), and the teacher's target is computed
on that very image.

The mixing happens per sample, in the dataset: sample ``i`` of an epoch draws its partner, its
mixing kind and its ratio from the sample's own seed (``data.transforms.sample_seed``), so a
mixed batch depends only on (seed, epoch, position), as every other augmentation here: resumed
runs and ``torchrun`` runs see exactly the images one uninterrupted process sees.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch

from edgedistill.data.transforms import split_item

__all__ = ["MixSettings", "MixedDataset", "mix_pair"]

_PARTNER_SALT = 0x5DEECE66D  # the partner's augmentation seed differs from the sample's own


@dataclass(frozen=True)
class MixSettings:
    """``mixup_alpha`` / ``cutmix_alpha``: Beta(alpha, alpha) for the mixing ratio, 0 = that kind
    off; with both on, each mixed sample picks one at even odds. ``prob``: share of samples mixed."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def mix_pair(x: torch.Tensor, y: torch.Tensor, kind: str, lam: float, rng: random.Random) -> torch.Tensor:
    """``x`` (C, H, W) mixed with ``y``: ``lam * x + (1 - lam) * y`` (mixup), or ``x`` with a box
    of area ``(1 - lam) * H * W`` (clipped at the border) taken from ``y`` (cutmix)."""
    if kind == "mixup":
        return x * lam + y * (1.0 - lam)
    _, h, w = x.shape
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = rng.randrange(h), rng.randrange(w)
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[:, top:bottom, left:right] = y[:, top:bottom, left:right]
    return out


class MixedDataset:
    """A training dataset whose items ``((index, seed)) -> (mixed image, label of index)``."""

    def __init__(self, dataset: Any, settings: MixSettings):
        self.dataset = dataset
        self.settings = settings
        for name in ("classes", "labels", "root", "paths", "bad_images"):
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Any) -> tuple[torch.Tensor, int]:
        index, seed = split_item(item)
        image, label = self.dataset[item]
        rng = random.Random(seed if seed is not None else index)
        s = self.settings
        if rng.random() >= s.prob:
            return image, label
        kinds = [k for k, a in (("mixup", s.mixup_alpha), ("cutmix", s.cutmix_alpha)) if a > 0]
        kind = kinds[rng.randrange(len(kinds))]
        lam = rng.betavariate(*(2 * [s.mixup_alpha if kind == "mixup" else s.cutmix_alpha]))
        partner = rng.randrange(len(self.dataset))
        other, _ = self.dataset[(partner, rng.getrandbits(63) ^ _PARTNER_SALT)]
        return mix_pair(image, other, kind, lam, rng), label
