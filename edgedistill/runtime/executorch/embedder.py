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
        from edgedistill.runtime.executorch.engine import load_method, max_batch

        self.path = Path(path)
        if output not in outputs:
            raise EdgeDistillError(f"{self.path} has no output {output!r} (outputs: {', '.join(outputs)})")
        self.method, self.settings = opened(RUNTIME, self.path, load_method, str(self.path),
                                            threads=check_threads(threads))
        self.threads, self.load_seconds = threads, self.settings["load_seconds"]
        self._index = list(outputs).index(output)
        meta = self.method.metadata
        # a dynamic batch axis is planned up to a bound: larger batches go in chunks
        self.max_batch = max_batch(self.method)
        self.dim = static_dim(meta.output_tensor_meta(self._index).sizes()[-1])
        self.name = name or f"executorch:{self.path.name}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        import torch  # the runtime takes and returns torch tensors

        from edgedistill.runtime.executorch.engine import execute

        x = torch.from_numpy(as_batch(batch))
        return execute(self.method, x, self.max_batch, self._index) if len(x) else np.zeros((0, self.dim or 0),
                                                                                              np.float32)
