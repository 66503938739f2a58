"""ExecuTorch programs (``.pte``) through ExecuTorch's Python runtime, loaded the one way
every caller uses (the embedder, the export gates, the deploy example, the bench worker),
and the bench worker's engine.

Self-contained: the standard library, numpy and executorch, no edgedistill import. The
Python runtime runs the XNNPACK delegate's kernels, as on Android and iOS; it takes and
returns torch tensors, so it loads libtorch (a phone's runtime does not). ``threads`` sizes
its process-wide thread pool. A missing library raises ImportError, a missing file
FileNotFoundError.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

__all__ = ["load_method", "max_batch", "execute", "import_runtime", "load"]


def load_method(path: str, *, threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The ``forward`` method of the program ``path``, ready to execute, and the settings."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ExecuTorch program not found: {path}")
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if threads is not None:
        portable_lib._unsafe_reset_threadpool(int(threads))  # the one knob the Python runtime exposes
    started = time.perf_counter()
    method = Runtime.get().load_program(path).load_method("forward")
    settings = {"runtime": "executorch.runtime (Python)", "method": "forward", "threads": threads,
                "threads_read_back": int(portable_lib._threadpool_get_thread_count()),
                "load_seconds": time.perf_counter() - started}
    return method, settings


def max_batch(method: Any) -> int:
    """The upper bound of the program's dynamic batch axis (XNNPACK planned memory for it)."""
    return int(method.metadata.input_tensor_meta(0).sizes()[0])


def execute(method: Any, x: Any, bound: int, index: int = 0) -> np.ndarray:
    """Output ``index`` of ``method`` for the torch batch ``x``, run in chunks of ``bound`` (a
    larger batch fails inside the runtime: ``set_inputs() ... error 0x10``), as an app must."""
    if len(x) <= bound:
        return np.asarray(method.execute((x,))[index], dtype=np.float32)
    return np.concatenate([np.asarray(method.execute((x[i:i + bound],))[index], dtype=np.float32)
                           for i in range(0, len(x), bound)])


def import_runtime() -> None:
    import executorch.runtime  # noqa: F401
    import torch  # noqa: F401  (the Python runtime's tensors)


def load(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[np.ndarray], Callable[[], Any]], dict[str, Any]]:
    """The bench worker's engine (``runtime.worker``): one program, its dynamic batch axis."""
    import torch

    method, settings = load_method(spec["model"], threads=int(spec["threads"]))
    bound = max_batch(method)
    info: dict[str, Any] = {"load_seconds": settings.pop("load_seconds"),
                            "settings": {**settings, "delegate": "XNNPACK", "max_batch": bound,
                                         "shapes": f"dynamic batch 1 to {bound} (one program); a larger batch "
                                                   f"runs in chunks of {bound}"}}

    def prepare(x: np.ndarray) -> Callable[[], Any]:
        inputs = torch.from_numpy(x)
        return lambda: execute(method, inputs, bound)

    return prepare, info
