"""Folders of images: labeled (ImageFolder) or unlabeled, split layouts, bad-image handling.

Layout rules (for the user docs):

- **Split layout.** A folder with no loose images, a ``train/`` subfolder, and either a
  ``val/`` (or ``validation/``) subfolder or no subfolders but split names (``train``,
  ``val``, ``validation``, ``test``) is a split layout: the train split is ``train/``, the val
  split ``val/`` (or ``validation/``); other subfolders are ignored.
  Any other folder is itself the train split, and has no val split of its own.
- **Labeled or not.** A split folder is *labeled* when it holds no images directly at its
  top level and at least one non-hidden subfolder holds images (at any depth): each such
  subfolder is a class, named after it, classes sorted by name. Subfolders without images
  are ignored. Otherwise (loose images at the top, possibly beside subfolders, or no
  subfolders at all) it is *unlabeled*: every image at any depth, label ``-1``, no classes.
  Distillation and pretraining ignore labels, so an unlabeled folder of year subfolders
  (``2023/``, ``2024/``) that reads as "labeled" does no harm there.
- **Files.** Extensions .jpg .jpeg .png .bmp .webp .tif .tiff .gif, case-insensitive. Files
  and folders whose names start with ``.`` are skipped (``.DS_Store``, ``.ipynb_checkpoints``,
  macOS ``._*`` resource forks); other files are ignored. Symlinked folders are followed
  (each real folder once). Order is deterministic: classes by name, then relative paths.

Bad images (design.md §10): construction opens and ``verify()``s every file (cheap: headers and,
for PNG, chunk checksums; no full decode). Files that fail are dropped and counted, and so are
images too large to decode safely (more than 120 megapixels, or an aspect ratio above 50:1:
a 321-byte 1 x 2,000,000 PNG would otherwise cost gigabytes once resized). A file
that passes but fails to decode later (a truncated JPEG) is caught in ``__getitem__``, which
substitutes the next readable index (deterministic) and counts it. More than
``max_bad_images`` in total raises :class:`BadImagesError`. The runtime count lives in each
process: every DataLoader worker holds its own copy of the dataset, so with W workers up to
``W x`` the remaining budget can be skipped at run time before one of them fails. Truncated
files are never "loaded anyway": ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left untouched.

Colour: everything becomes 8-bit RGB. Alpha is dropped (``Image.convert("RGB")``, as
torchvision and timm do, so the torch-free runtime can match it with plain PIL); 16-bit
grayscale is scaled by 1/257 (65535 -> 255) instead of PIL's clipping; EXIF orientation is
applied first (photos appear as in a viewer).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from edgedistill.data.transforms import seeded_call, split_item
from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.folders import (IMG_EXTENSIONS, SPLIT_DIRS, check_folder, has_split_layout,  # noqa: F401
                                         is_image_file, list_images, scan_folder)
from edgedistill.runtime.preprocessing import check_image_size, load_rgb

logger = logging.getLogger(__name__)

class BadImagesError(EdgeDistillError):
    """Too many corrupt or truncated images.

    Raised inside a DataLoader worker, torch re-creates the exception in the main process
    with a multi-line traceback as its message; this class keeps only the original line
    so the CLI still prints one line.
    """

    def __init__(self, message: str) -> None:
        tag = f"{type(self).__name__}: "
        if "Original Traceback" in message:
            lines = [ln for ln in message.splitlines() if tag in ln]
            if lines:
                message = lines[-1].split(tag, 1)[1]
        super().__init__(message)


def resolve_split(path: str, split: str, val_path: str = "") -> str:
    """The folder (or ``"digits"``) that holds ``split`` of ``data.path``.

    ``val_path`` (when set) wins for the val split; it may itself be a split layout, whose
    ``val/`` is then used.
    """
    if split not in SPLIT_DIRS:
        raise EdgeDistillError(f"unknown data split '{split}' (expected train or val)")
    if split == "val" and val_path:
        path, what = val_path, "data.val_path"
    else:
        what = "data.path"
    if path == "digits":
        return path
    root = check_folder(path, what)
    if has_split_layout(root):
        for name in SPLIT_DIRS[split]:
            if (root / name).is_dir():
                return str(root / name)
        raise EdgeDistillError(f"{what} {root} has no {split}/ subfolder; set data.val_path to a labeled folder")
    if split == "val" and what == "data.path":
        raise EdgeDistillError(
            f"data.path {root} has no val split (no train/ and val/ subfolders); set data.val_path to a labeled folder"
        )
    return str(root)


# ----------------------------------------------------------------------------- images


def verify_image(path: str) -> str | None:
    """Cheap check: ``None`` when the header (and PNG checksums) look sound and the size is
    within bounds (``runtime.preprocessing.check_image_size``), else the reason."""
    try:
        with Image.open(path) as img:
            refused = check_image_size(*img.size)
            if refused:
                return f"too large to decode: {refused}"
            img.verify()
        return None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return f"{type(exc).__name__}: {exc}"


def _too_many(bad: list[str], budget: int, root: Any) -> BadImagesError:
    names = ", ".join(os.path.basename(p) for p in bad[:3]) + (", ..." if len(bad) > 3 else "")
    return BadImagesError(
        f"{len(bad)} corrupt or truncated image(s) in {root}, more than data.max_bad_images={budget} ({names})"
    )


class ImageFolderDataset:
    """Images of one split folder; items ``(transform(rgb_pil), label)``, label -1 if unlabeled.

    ``dataset[i]`` or ``dataset[(i, seed)]``: with a seed, the transform's torch RNG is
    seeded with it (see :func:`edgedistill.data.transforms.seeded_call`), which makes
    augmentations independent of worker count and order.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable | None = None,
        *,
        max_bad_images: int = 10,
        require_labels: bool = False,
        scan: bool = True,
    ) -> None:
        self.root = str(check_folder(root))
        self.transform = transform
        self.max_bad_images = max_bad_images
        paths, labels, self.classes = scan_folder(self.root, require_labels=require_labels)
        self.bad_images: list[str] = []  # this process's count: scan + skipped at load time
        if scan:
            with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
                reasons = list(pool.map(verify_image, paths, chunksize=64))
            for path, reason in zip(paths, reasons):
                if reason is not None:
                    logger.warning("skipping unreadable image %s (%s)", path, reason)
                    self.bad_images.append(path)
            if len(self.bad_images) > max_bad_images:
                raise _too_many(self.bad_images, max_bad_images, self.root)
            keep = [r is None for r in reasons]
            paths = [p for p, k in zip(paths, keep) if k]
            labels = [y for y, k in zip(labels, keep) if k]
            if not paths:
                raise EdgeDistillError(f"no readable images in {self.root} ({len(self.bad_images)} unreadable)")
        self.paths: list[str] | None = paths
        self.labels: list[int] = labels
        self._known_bad: set[int] = set()

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        kind = f"{len(self.classes)} classes" if self.labeled else "unlabeled"
        return f"ImageFolderDataset({self.root!r}, {len(self)} images, {kind})"

    def load(self, index: int) -> tuple[Image.Image, int]:
        """The RGB image at ``index`` (or the next readable one) and its label."""
        n = len(self.paths)
        for step in range(n):
            i = (index + step) % n
            if i in self._known_bad:
                continue
            try:
                return load_rgb(self.paths[i]), self.labels[i]
            except Exception as exc:  # decode errors come in many types; bugs still surface via the budget
                self._known_bad.add(i)
                self.bad_images.append(self.paths[i])
                logger.warning("skipping undecodable image %s (%s: %s)", self.paths[i], type(exc).__name__, exc)
                if len(self.bad_images) > self.max_bad_images:
                    raise _too_many(self.bad_images, self.max_bad_images, self.root) from None
        raise EdgeDistillError(f"no readable images in {self.root}")

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, int]:
        index, seed = split_item(item)
        img, label = self.load(index)
        return seeded_call(self.transform, img, seed), label
