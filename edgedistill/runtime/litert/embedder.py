"""The LiteRT embedder: a ``.tflite`` model in the LiteRT interpreter (:mod:`.engine`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.embedders import as_batch, static_dim

__all__ = ["LiteRtEmbedder"]


class LiteRtEmbedder:
    """A ``.tflite`` model (XNNPACK delegate, ``threads``) through ``ai_edge_litert``.

    Its outputs are unnamed in order (``output_0``, ...): ``outputs`` lists them as the
    manifest does, and ``output`` picks one."""

    def __init__(self, path: str | Path, threads: int | None = None, output: str = "embedding",
                 outputs: Sequence[str] = ("embedding",), name: str | None = None, **_: Any) -> None:
        from edgedistill.runtime.base import check_threads, opened
        from edgedistill.runtime.litert import RUNTIME
        from edgedistill.runtime.litert.engine import open_program

        self.path = Path(path)
        if output not in outputs:
            raise EdgeDistillError(f"{self.path} has no output {output!r} (outputs: {', '.join(outputs)})")
        self.program, self.settings = opened(RUNTIME, self.path, open_program, str(self.path),
                                             threads=check_threads(threads))
        self.threads, self.load_seconds = threads, self.settings["load_seconds"]
        self._index = list(outputs).index(output)
        if self._index >= len(self.program.outputs):
            raise EdgeDistillError(f"{self.path} has {len(self.program.outputs)} outputs, the manifest {len(outputs)}")
        self.input_shape = [int(v) for v in self.program.input["shape"]]
        self.dim = static_dim(int(self.program.outputs[self._index]["shape"][-1]))
        self.name = name or f"litert:{self.path.name}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        x = as_batch(batch)
        if len(x) == 0:
            return np.zeros((0, self.dim or 0), np.float32)
        return np.asarray(self.program.run(x)[self._index], dtype=np.float32)
