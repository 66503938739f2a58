"""Image folders without torch: which files are images, split layouts, labeled folders.

The layout rules (``data.folders`` documents them for users) live here so that the torch-free
runtime (galleries of the deploy examples) reads folders exactly as training and eval do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgedistill.errors import EdgeDistillError

__all__ = ["IMG_EXTENSIONS", "SPLIT_DIRS", "is_image_file", "list_images", "has_split_layout", "check_folder",
           "scan_folder"]

logger = logging.getLogger("edgedistill.data.folders")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation")}
_LAYOUT_NAMES = {"train", "val", "validation", "test"}


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _accepted() -> str:
    return " ".join(IMG_EXTENSIONS) + ", any case; hidden files are skipped"


def _visible_entries(root: Path) -> tuple[list[str], list[str]]:
    """Non-hidden (files, dirs) directly in ``root``, sorted."""
    files, dirs = [], []
    try:
        with os.scandir(root) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():  # follows symlinks
                    dirs.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
    except OSError as exc:
        raise EdgeDistillError(f"cannot read {root}: {exc.strerror or exc}") from None
    return sorted(files), sorted(dirs)


def list_images(root: str | Path) -> list[str]:
    """Every image under ``root`` at any depth, as sorted paths (hidden parts skipped)."""
    root = Path(root)
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    # Sort by path relative to root, with "/" as the separator, for an OS-independent order.
    return sorted(found, key=lambda p: Path(p).relative_to(root).as_posix())


def has_split_layout(root: str | Path) -> bool:
    """True for a split layout: no loose images, ``train/``, and either ``val/`` (or
    ``validation/``) or no subfolders other than split names."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return False
    files, dirs = _visible_entries(root)
    if any(is_image_file(f) for f in files) or "train" not in dirs:
        return False
    return any(d in dirs for d in SPLIT_DIRS["val"]) or set(dirs) <= _LAYOUT_NAMES


def check_folder(path: str | Path, what: str = "data path") -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise EdgeDistillError(f"{what} not found: {path}")
    if not path.is_dir():
        raise EdgeDistillError(f"{what} is not a directory: {path}")
    return path


def scan_folder(root: str | Path, *, require_labels: bool = False) -> tuple[list[str], list[int], list[str]]:
    """List a split folder: ``(paths, labels, classes)``; labels are -1 when unlabeled."""
    root = check_folder(root)
    files, dirs = _visible_entries(root)
    loose = [f for f in files if is_image_file(f)]
    class_paths = {} if loose else {d: list_images(root / d) for d in dirs}
    class_paths = {d: p for d, p in class_paths.items() if p}
    if class_paths:
        classes = sorted(class_paths)
        empty = sorted(set(dirs) - set(classes))
        if empty:
            logger.warning("%s: ignoring %d subfolder(s) without images: %s", root, len(empty), ", ".join(empty[:5]))
        paths = [p for c in classes for p in class_paths[c]]
        labels = [i for i, c in enumerate(classes) for _ in class_paths[c]]
        return paths, labels, classes
    paths = list_images(root)
    if not paths:
        raise EdgeDistillError(f"no images found in {root} (accepted extensions: {_accepted()})")
    if require_labels:
        why = f"it has {len(loose)} image(s) directly at its top level" if loose else "it has no class subfolders"
        raise EdgeDistillError(
            f"{root} is not a labeled image folder ({why}); k-NN needs one subfolder per class: {root}/<class>/<image>"
        )
    return paths, [-1] * len(paths), []
