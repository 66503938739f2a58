"""Embedders: a model behind one small interface, whatever runs it.

An embedder maps a float32 NCHW batch (already preprocessed, see ``runtime.preprocessing``) to
(B, D) float32 embeddings, for any batch size. Each runtime package defines its own
(``runtime/<name>/embedder.py``, over the sessions its ``engine`` opens);
``eval.features.TorchEmbedder`` is the torch one. The k-NN, the export gates and the deploy
examples take any of them; :func:`open_embedder` picks one through the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgedistill.errors import EdgeDistillError

__all__ = ["Embedder", "PerCallBatch", "open_embedder", "as_batch", "static_dim"]


@runtime_checkable
class Embedder(Protocol):
    """``embed((B, 3, H, W) float32) -> (B, D) float32``; ``name`` and ``dim`` (D, or None when
    the model does not declare it)."""

    name: str
    dim: int | None

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


def as_batch(batch: np.ndarray, dtype: np.dtype = np.dtype(np.float32)) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.ndim != 4:
        raise ValueError(f"an embedder takes a (B, C, H, W) batch, got shape {batch.shape}")
    return np.ascontiguousarray(batch, dtype=dtype)


def static_dim(dim: Any) -> int | None:
    return int(dim) if isinstance(dim, (int, np.integer)) and dim > 0 else None


class PerCallBatch:
    """An embedder whose model takes at most ``batch`` images per call (its manifest entry's
    ``batch``): a static-batch model, or a dynamic-INT8 one whose activation ranges span the
    whole call, so that an image's embedding depends on the images beside it. Larger batches
    are split, so every caller (the gates, ``eval``, the deploy examples) gets the figures the
    manifest records, whatever batch size it asks for. Everything else is the wrapped
    embedder's."""

    def __init__(self, inner: Any, batch: int) -> None:
        self._inner, self.call_batch = inner, int(batch)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        b = self.call_batch
        if len(batch) <= b:
            return self._inner.embed(batch)
        return np.concatenate([np.asarray(self._inner.embed(batch[i:i + b]), dtype=np.float32)
                               for i in range(0, len(batch), b)])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def open_embedder(path_or_bundle: str | Path, variant: str | None = None, *, verify: bool = True,
                  **kwargs: Any) -> Any:
    """An embedder for a model file (every suffix a runtime of the registry opens:
    ``registry.suffixes()``) or a bundle directory (``variant`` picks the model;
    default: the manifest's default variant). ``kwargs`` go to the embedder (threads,
    providers, precision, device...).

    ``verify``: a bundle variant's files are checked against the manifest's sha256 first
    (hashing costs a fraction of loading the model); pass False in an app that verified the
    bundle when it installed it."""
    from edgedistill.runtime import registry
    from edgedistill.runtime.manifest import default_variant, read_manifest, variant_path, verify_variant

    path = Path(path_or_bundle)
    if path.is_dir():
        manifest = read_manifest(path)
        variant = variant or default_variant(manifest)
        model = variant_path(manifest, path, variant)
        if verify:
            verify_variant(manifest, path, variant)
        entry = manifest.variants[variant]
        runtime = registry.for_format(entry.format)
        kwargs.setdefault("output", manifest.outputs[0].name)
        kwargs.setdefault("outputs", [o.name for o in manifest.outputs])
        kwargs.setdefault("name", f"{manifest.name}:{variant}")
        files = runtime.variant_files(entry, path)
        if len(files) > 1:
            kwargs.setdefault("weights", files[1][0])
        return runtime.open_variant(model, entry, **kwargs)
    if variant is not None:
        raise EdgeDistillError(f"variant={variant!r} needs a bundle directory, got the file {path}")
    if not path.exists():
        raise EdgeDistillError(f"model not found: {path}")
    runtime = registry.for_suffix(path.suffix)
    if runtime is None:
        raise EdgeDistillError(f"cannot tell the model format of {path}: expected a "
                               f"{', '.join(registry.suffixes())} file or a bundle directory with a manifest.json")
    return runtime.embedder(path, **kwargs)
