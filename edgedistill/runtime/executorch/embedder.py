"""The ExecuTorch embedder: a ``.pte`` program through ExecuTorch's Python runtime (:mod:`.engine`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.embedders import as_batch, static_dim

__all__ = ["ExecuTorchEmbedder"]


class ExecuTorchEmbedder:
    """An ExecuTorch program (``.pte``, XNNPACK delegate) through ExecuTorch's Python runtime.

    A ``.pte`` does not name its outputs: ``outputs`` lists them in order (the manifest's), and
    ``output`` picks one. ``threads`` sizes ExecuTorch's thread pool, which is per process.
    """

    def __init__(self, path: str | Path, threads: int | None = None, output: str = "embedding",
                 outputs: Sequence[str] = ("embedding",), name: str | None = None, **_: Any) -> None:
        from edgedistill.runtime.base import check_threads, opened
        from edgedistill.runtime.executorch import RUNTIME
        from edgedistill.runtime.executorch.engine import load_method

        self.path = Path(path)
        if output not in outputs:
            raise EdgeDistillError(f"{self.path} has no output {output!r} (outputs: {', '.join(outputs)})")
        self.method, self.settings = opened(RUNTIME, self.path, load_method, str(self.path),
                                            threads=check_threads(threads))
        self.threads, self.load_seconds = threads, self.settings["load_seconds"]
        self._index = list(outputs).index(output)
        meta = self.method.metadata
        # a dynamic batch axis is planned up to a bound: larger batches go in chunks
        self.max_batch = int(meta.input_tensor_meta(0).sizes()[0])
        self.dim = static_dim(meta.output_tensor_meta(self._index).sizes()[-1])
        self.name = name or f"executorch:{self.path.name}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        import torch  # the runtime takes and returns torch tensors

        x = torch.from_numpy(as_batch(batch))
        parts = [self.method.execute((x[i:i + self.max_batch],))[self._index] for i in range(0, len(x), self.max_batch)]
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts]) if parts else \
            np.zeros((0, self.dim or 0), np.float32)
