"""Real images for calibration and the gates, preprocessed exactly as an app does.

Every image the export stage feeds a model goes through ``edgedistill.runtime.preprocessing``
with the bundle's own ``preprocessing`` dict (numpy + Pillow, no torchvision): calibration
statistics, parity references and k-NN figures all see the input an app will produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgedistill.errors import EdgeDistillError

if TYPE_CHECKING:
    from edgedistill.runtime.preprocessing import PreprocessSpec

__all__ = ["Preprocess", "open_split", "pick_indices", "load_arrays", "labeled_pair"]


class Preprocess:
    """A picklable ``PIL image -> (3, H, W) float32`` transform from a preprocessing dict."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(self, image: Any) -> np.ndarray:
        from edgedistill.runtime.preprocessing import preprocess

        return preprocess(image, self.spec)


def open_split(path: str, split: str, spec: PreprocessSpec, *, require_labels: bool = False,
               scan: bool = True) -> Any:
    """The ``split`` of an image folder (or ``"digits"``) with the numpy transform:
    ``dataset[i] -> ((3, H, W) float32, label)``, ``dataset.load(i) -> (RGB PIL, label)``.
    ``scan=False`` skips checking every file up front (calibration reads only a few; a bad
    one is then replaced by the next readable image when loaded)."""
    from edgedistill.data import build_dataset

    crop = spec["crop"] if isinstance(spec["crop"], int) else spec["crop"][0]
    return build_dataset(str(path), split, Preprocess(spec), img_size=int(crop), require_labels=require_labels,
                         scan=scan)


def labeled_pair(path: str, spec: PreprocessSpec, option: str = "--data") -> tuple[Any, Any]:
    """(train, val) labeled splits of ``path`` with the same classes, for the k-NN gate."""
    from edgedistill.data import check_same_classes, has_split_layout

    if path != "digits":
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise EdgeDistillError(f"{option} folder not found: {folder}")
        if not has_split_layout(folder):
            raise EdgeDistillError(f"{option} {folder} has no train/ and val/ subfolders (each with one folder "
                                   "per class): the accuracy gate needs a labeled k-NN bank and queries")
    train = open_split(path, "train", spec, require_labels=True)
    val = open_split(path, "val", spec, require_labels=True)
    check_same_classes(train, val)
    return train, val


def pick_indices(total: int, count: int, seed: int) -> np.ndarray:
    """``min(count, total)`` distinct indices spread over the dataset (labeled folders are
    sorted by class, so the first N would all be one class), sorted, reproducible."""
    count = min(int(count), int(total))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=count, replace=False))


def load_arrays(dataset: Any, indices: np.ndarray, spec: PreprocessSpec, *, progress: Any = None,
                description: str = "images") -> tuple[np.ndarray, list[Any]]:
    """Preprocess ``dataset`` images at ``indices`` -> ((N, 3, H, W) float32, the RGB PIL images)."""
    from edgedistill.runtime.preprocessing import preprocess

    images, arrays = [], []
    task = progress.add_task(description, total=len(indices)) if progress is not None else None
    for i in indices:
        img, _ = dataset.load(int(i))
        images.append(img)
        arrays.append(preprocess(img, spec))
        if task is not None:
            progress.advance(task)
    if not arrays:
        raise EdgeDistillError(f"no images for {description}")
    return np.stack(arrays), images
