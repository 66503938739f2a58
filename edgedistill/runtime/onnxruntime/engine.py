"""ONNX Runtime sessions, opened the one way every caller uses (the embedders, the export
gates, the deploy examples, the bench worker), and the bench worker's engine.

Self-contained: the standard library, numpy and onnxruntime, no edgedistill import, so the
bench worker (``runtime.worker``) runs it where edgedistill is not installed.

Settings: ``intra_op_num_threads`` = ``threads`` (inter-op 1, sequential execution), graph
optimization ``ORT_ENABLE_ALL``, execution providers explicit (CPU unless asked). A missing
library raises ImportError, a missing provider LookupError, a missing file FileNotFoundError.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["quiet", "open_session", "import_runtime", "load"]


def quiet() -> None:
    """ONNX Runtime writes usage counters into ``~/.cache/Microsoft/DeveloperTools/.onnxruntime``
    unless told not to (it reads this at import; "0" or "" would leave it on)."""
    if os.environ.get("EDGEDISTILL_THIRD_PARTY_TELEMETRY") != "1":
        os.environ["ORT_DISABLE_TELEMETRY"] = "1"


def open_session(path: str, *, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """An ``InferenceSession`` of ``path`` and the settings it was made with; ``providers`` in
    priority order (default CPU only, so the choice is explicit rather than whatever the
    installed wheel prefers)."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model not found: {path}")
    available = ort.get_available_providers()
    wanted = list(providers or ["CPUExecutionProvider"])
    unknown = [p for p in wanted if p not in available]
    if unknown:
        raise LookupError(f"ONNX Runtime provider {', '.join(unknown)} is not available here "
                          f"(available: {', '.join(available)})")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
    settings = {"providers": session.get_providers(), "intra_op_num_threads": threads, "inter_op_num_threads": 1,
                "execution_mode": "ORT_SEQUENTIAL", "graph_optimization_level": "ORT_ENABLE_ALL",
                "load_seconds": time.perf_counter() - started}
    return session, settings


def import_runtime() -> None:
    import onnxruntime  # noqa: F401


def load(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[np.ndarray], Callable[[], Any]], dict[str, Any]]:
    """The bench worker's engine (``runtime.worker``): one session, any batch size."""
    info: dict[str, Any] = {}
    provider = spec.get("device") or "CPUExecutionProvider"
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    session, settings = open_session(spec["model"], threads=int(spec["threads"]), providers=providers)
    info["load_seconds"] = settings.pop("load_seconds")
    info["settings"] = {**settings, "shapes": "dynamic batch (one session)"}
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def prepare(x: np.ndarray) -> Callable[[], Any]:
        feed = {input_name: x}

        def run() -> np.ndarray:
            return session.run([output_name], feed)[0]

        return run

    return prepare, info
