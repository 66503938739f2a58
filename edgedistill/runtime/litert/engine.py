"""LiteRT (the TFLite runtime) interpreters, opened the one way every caller uses (the
embedder, the export gates, the deploy example, the bench worker), and the bench worker's
engine.

Self-contained: the standard library, numpy and ``ai_edge_litert``, no edgedistill import.
``ai_edge_litert.interpreter.Interpreter`` is the same interpreter an Android app loads a
``.tflite`` file into; with the default op resolver it hands the graph to the XNNPACK
delegate (the CPU kernels of Android and Arm Linux), ``num_threads`` = ``threads``. The
programs have a static batch (litert-torch cannot lower the ViT's patch flattening with a
dynamic one): a batch of B images is B invocations. A quantized input or output (a
full-integer model) is quantized and dequantized here with the scale and zero point the
model carries. A missing library raises ImportError, a missing file FileNotFoundError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["Program", "quiet", "open_program", "import_runtime", "load"]


def quiet() -> None:
    """The native libraries under LiteRT (and litert-torch's TensorFlow and JAX) log to stderr
    unless told otherwise before they load; litert-torch draws its own progress."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # else TensorFlow's import announces oneDNN
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """TFLite prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ on
    every interpreter it makes, past any log level: fd 2 points elsewhere meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Program:
    """A ``.tflite`` model in an interpreter: ``run((B, 3, H, W) float32)`` -> its outputs,
    float32, in the model's signature order (``output_0``, ``output_1``, ...)."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self.runner = interpreter.get_signature_runner()
        inputs = self.runner.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"the model has {len(inputs)} inputs; an embedder takes one image input")
        (self.input_name, self.input), = inputs.items()
        details = self.runner.get_output_details()
        self.output_names = sorted(details, key=lambda n: (len(n), n))  # output_0, output_1, ..., output_10
        self.outputs = [details[n] for n in self.output_names]
        self.batch = int(self.input["shape"][0])  # static

    @staticmethod
    def _quantized(detail: dict[str, Any]) -> tuple[float, int] | None:
        scale, zero = detail.get("quantization", (0.0, 0))
        return (float(scale), int(zero)) if detail["dtype"] != np.float32 and scale else None

    def _feed(self, x: np.ndarray) -> np.ndarray:
        params = self._quantized(self.input)
        if params is None:
            return x
        info = np.iinfo(self.input["dtype"])
        return np.clip(np.round(x / params[0]) + params[1], info.min, info.max).astype(self.input["dtype"])

    def _read(self, detail: dict[str, Any], y: np.ndarray) -> np.ndarray:
        params = self._quantized(detail)
        return y if params is None else (y.astype(np.float32) - params[1]) * np.float32(params[0])

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        parts = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            if len(chunk) < self.batch:  # the static batch: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((self.batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out = self.runner(**{self.input_name: self._feed(np.ascontiguousarray(chunk, np.float32))})
            parts.append([self._read(d, out[n]) for n, d in zip(self.output_names, self.outputs)])
        return [np.concatenate([p[i] for p in parts])[:len(x)] for i in range(len(self.outputs))]


def open_program(path: str, *, threads: int | None = None) -> tuple[Program, dict[str, Any]]:
    """The model ``path`` in a LiteRT interpreter (XNNPACK, ``threads``), and the settings."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LiteRT model not found: {path}")
    quiet()
    from ai_edge_litert.interpreter import Interpreter

    started = time.perf_counter()
    with _native_stderr_muted():
        interpreter = Interpreter(model_path=path, num_threads=None if threads is None else int(threads))
        interpreter.allocate_tensors()
    program = Program(interpreter)
    settings = {"runtime": "ai_edge_litert.interpreter.Interpreter", "delegate": "XNNPACK (the default CPU delegate)",
                "num_threads": threads, "static_batch": program.batch,
                "input_dtype": np.dtype(program.input["dtype"]).name, "load_seconds": time.perf_counter() - started}
    return program, settings


def import_runtime() -> None:
    quiet()
    import ai_edge_litert.interpreter  # noqa: F401


def load(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[np.ndarray], Callable[[], Any]], dict[str, Any]]:
    """The bench worker's engine (``runtime.worker``): one interpreter; a batch of B images is
    B / static-batch invocations, as an app runs them."""
    program, settings = open_program(spec["model"], threads=int(spec["threads"]))
    info: dict[str, Any] = {"load_seconds": settings.pop("load_seconds"),
                            "settings": {**settings, "shapes": f"static batch {program.batch}: a larger batch is "
                                                               "that many invocations"}}

    def prepare(x: np.ndarray) -> Callable[[], Any]:
        def run() -> np.ndarray:
            return program.run(x)[0]

        return run

    return prepare, info
