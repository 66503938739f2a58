"""The ONNX Runtime embedder: an ``.onnx`` model in a session from :mod:`.engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.embedders import as_batch, static_dim

__all__ = ["OnnxEmbedder"]


class OnnxEmbedder:
    """An ONNX model in an ONNX Runtime session.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
        providers: execution providers in priority order (default CPU only).
        output: the output to return; a model with a single output may name it otherwise.
    """

    def __init__(self, path: str | Path, threads: int | None = None,
                 providers: Sequence[str] | None = None, output: str = "embedding",
                 name: str | None = None, **_: Any) -> None:
        from edgedistill.runtime.base import check_threads, opened
        from edgedistill.runtime.onnxruntime import RUNTIME
        from edgedistill.runtime.onnxruntime.engine import open_session

        self.path = Path(path)
        self.session, self.settings = opened(RUNTIME, self.path, open_session, str(self.path),
                                             threads=check_threads(threads), providers=providers)
        self.threads = threads
        self.load_seconds = self.settings["load_seconds"]
        self.providers = self.session.get_providers()
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EdgeDistillError(f"{self.path} has {len(inputs)} inputs; an embedder takes one image input")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self._input_dtype = np.dtype(np.float16 if inputs[0].type == "tensor(float16)" else np.float32)
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if output in names:
            chosen = outputs[names.index(output)]
        elif len(outputs) == 1:
            chosen = outputs[0]
        else:
            raise EdgeDistillError(f"{self.path} has no output {output!r} (outputs: {', '.join(names)})")
        self.output_name = chosen.name
        self.dim = static_dim(chosen.shape[-1]) if chosen.shape else None
        self.name = name or f"onnxruntime:{self.path.name}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        x = as_batch(batch, self._input_dtype)
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)
