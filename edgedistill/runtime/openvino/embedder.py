"""The OpenVINO embedder: an IR (.xml + .bin) compiled by :mod:`.engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.embedders import as_batch

__all__ = ["OpenVinoEmbedder"]


class OpenVinoEmbedder:
    """An OpenVINO IR (.xml + .bin) compiled for a device.

    Args:
        path_xml: the .xml file (the .bin beside it unless ``weights`` says otherwise).
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default).
        precision: ``INFERENCE_PRECISION_HINT``: "f32" (default: true fp32; on CPUs with bf16
            OpenVINO would otherwise run an FP32 model in bf16), "bf16", "f16", or None to
            leave the device default.
        device: "CPU", "GPU", "NPU", "AUTO", ...
        config: further compile properties (e.g. {"PERFORMANCE_HINT": "THROUGHPUT"}).
    """

    def __init__(self, path_xml: str | Path, threads: int | None = None, precision: str | None = "f32",
                 device: str = "CPU", output: str = "embedding", name: str | None = None,
                 config: dict[str, Any] | None = None, weights: str | Path | None = None, **_: Any) -> None:
        from edgedistill.runtime.base import check_threads, opened
        from edgedistill.runtime.openvino import RUNTIME
        from edgedistill.runtime.openvino.engine import PRECISIONS, compile_model

        self.path = Path(path_xml)
        if precision is not None and precision not in PRECISIONS:
            raise EdgeDistillError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.compiled, self.settings = opened(RUNTIME, f"{self.path} for {device}", compile_model, str(self.path),
                                              None if weights is None else str(weights), threads=check_threads(threads),
                                              precision=precision, device=device, properties=config)
        self.threads, self.precision, self.device = threads, precision, device
        self.properties = self.settings["properties"]
        self.load_seconds = self.settings["load_seconds"]
        if len(self.compiled.inputs) != 1:
            raise EdgeDistillError(f"{self.path} has {len(self.compiled.inputs)} inputs; "
                                   "an embedder takes one image input")
        self.input_name = self.compiled.inputs[0].get_any_name()
        self.input_shape = [d.get_length() if d.is_static else None for d in self.compiled.inputs[0].get_partial_shape()]
        outputs = list(self.compiled.outputs)
        chosen = next((o for o in outputs if output in o.get_names()), None)
        if chosen is None:
            if len(outputs) != 1:
                names = ", ".join(o.get_any_name() for o in outputs)
                raise EdgeDistillError(f"{self.path} has no output {output!r} (outputs: {names})")
            chosen = outputs[0]
        self._output = chosen
        self.output_name = chosen.get_any_name()
        last = chosen.get_partial_shape()[-1]
        self.dim = last.get_length() if last.is_static else None
        self._request = self.compiled.create_infer_request()
        self.name = name or f"openvino-{precision or 'default'}:{self.path.name}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        result = self._request.infer({0: as_batch(batch)})
        return np.array(result[self._output], dtype=np.float32, copy=True)
