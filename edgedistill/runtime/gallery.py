"""A labeled gallery embedded by a bundle's model, and k-NN classification against it: what
an app that recognizes things does with a bundle (``deploy_examples/`` use it).

    from edgedistill.runtime import open_embedder, read_manifest
    from edgedistill.runtime.gallery import Gallery

    manifest = read_manifest("export/my_student", verify=True)
    model = open_embedder("export/my_student", "onnx_int8", threads=2)
    gallery = Gallery.embed(model, "gallery/", manifest.preprocessing.spec, cache_key="...")
    for result in gallery.classify(model, ["photo.jpg"], manifest.preprocessing.spec):
        print(result["path"], result["label"])

The gallery is an image folder with one subfolder per class (the layout rules of
``runtime.folders``); its embeddings can be cached beside it and written as JSON for the
C++ and web examples.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.knn import _top_k, knn_predict, l2_normalize
from edgedistill.runtime.preprocessing import preprocess

if TYPE_CHECKING:
    from edgedistill.runtime.preprocessing import PreprocessSpec
    from edgedistill.runtime.manifest import Manifest

__all__ = ["Gallery", "embed_paths", "expand_images", "GALLERY_FORMAT"]

GALLERY_FORMAT = "edgedistill-gallery"


def embed_paths(model: Any, paths: Sequence[str | Path], spec: PreprocessSpec, batch_size: int) -> np.ndarray:
    """(N, D) float32 embeddings of image files, ``batch_size`` images per model call."""
    chunks = [np.asarray(model.embed(np.stack([preprocess(p, spec) for p in paths[i:i + batch_size]])),
                         dtype=np.float32) for i in range(0, len(paths), batch_size)]
    return np.concatenate(chunks)


def expand_images(items: Sequence[str | Path]) -> list[Path]:
    """Image files and folders (every image in them, sorted) -> image paths."""
    from edgedistill.runtime.folders import list_images

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = [Path(p) for p in list_images(path)]
            if not found:
                raise EdgeDistillError(f"no images in {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise EdgeDistillError(f"image not found: {path}")
    return paths


def _scan(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    from edgedistill.runtime.folders import scan_folder

    if not root.is_dir():
        raise EdgeDistillError(f"gallery folder not found: {root}")
    paths, labels, classes = scan_folder(root, require_labels=True)  # one subfolder per class
    return [Path(p) for p in paths], np.asarray(labels, dtype=np.int64), classes


@dataclass
class Gallery:
    """Embeddings (N, D) of a labeled folder's images, with their labels and class names."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    embeddings: np.ndarray

    @classmethod
    def embed(cls, model: Any, root: str | Path, spec: PreprocessSpec, *, batch_size: int = 16,
              cache_key: str | None = None) -> "Gallery":
        """Embed ``root``; with ``cache_key`` (e.g. the model files' sha256) the embeddings are
        kept in ``<root>/.embeddings-<key>.npz``, reused while the model, the preprocessing and
        every image (path, size, mtime) are unchanged."""
        root = Path(root)
        paths, labels, classes = _scan(root)
        cache = _cache_path(root, paths, spec, cache_key) if cache_key is not None else None
        if cache is not None and cache.is_file():
            with np.load(cache, allow_pickle=False) as data:
                return cls(root, paths, labels, classes, data["embeddings"])
        feats = embed_paths(model, paths, spec, batch_size)
        if cache is not None:
            _save_cache(cache, feats)
        return cls(root, paths, labels, classes, feats)

    def classify(self, queries: np.ndarray, paths: Sequence[str | Path], k: int = 20, temperature: float = 0.07,
                 neighbours: int = 5) -> list[dict[str, Any]]:
        """DINO-weighted k-NN of query embeddings (one per path): the label, its vote share,
        every class's votes and the nearest gallery images."""
        preds, votes = knn_predict(self.embeddings, self.labels, queries, k=k, temperature=temperature,
                                   num_classes=len(self.classes), return_votes=True)
        sims, cols = _top_k(l2_normalize(queries) @ l2_normalize(self.embeddings).T,
                            min(neighbours, len(self.paths)))
        shares = votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-300)
        return [{"path": str(q), "label": self.classes[p], "class_index": int(p), "score": float(shares[i, p]),
                 "votes": {c: float(votes[i, j]) for j, c in enumerate(self.classes)},
                 "neighbours": [{"path": str(self.paths[c]), "label": self.classes[self.labels[c]],
                                 "similarity": float(s)} for c, s in zip(cols[i], sims[i])]}
                for i, (q, p) in enumerate(zip(paths, preds))]

    def write_json(self, path: str | Path, manifest: Manifest, variant: str, model_sha256: str) -> None:
        """The gallery for the C++ and web examples: L2-normalized embeddings (9 significant
        digits: float32 round-trips), labels, classes and what model made them."""
        from edgedistill.utils import write_output

        head = {"format": GALLERY_FORMAT, "version": 1, "bundle": manifest.name, "variant": variant,
                "model_file": manifest.variants[variant].file, "model_sha256": model_sha256,
                "output": manifest.outputs[0].name, "dim": int(self.embeddings.shape[1]),
                "classes": self.classes, "labels": [int(v) for v in self.labels],
                "paths": [p.relative_to(self.root).as_posix() for p in self.paths]}
        rows = ",\n".join("[" + ",".join(f"{v:.9g}" for v in row) + "]" for row in l2_normalize(self.embeddings))
        write_output(path, json.dumps(head)[:-1] + ',\n"embeddings": [\n' + rows + "\n]}\n")


def _cache_path(root: Path, paths: list[Path], spec: PreprocessSpec, model_key: str) -> Path:
    listing = [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key = hashlib.sha256(json.dumps([model_key, spec, listing], sort_keys=True).encode()).hexdigest()[:20]
    return root / f".embeddings-{key}.npz"


def _save_cache(cache: Path, feats: np.ndarray) -> None:
    tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, embeddings=feats)
        os.replace(tmp, cache)
    except OSError as exc:  # a read-only gallery still classifies
        print(f"warning: cannot write the cache {cache}: {exc}", file=sys.stderr)
        tmp.unlink(missing_ok=True)
