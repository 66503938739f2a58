"""The one place ONNX Runtime sessions and OpenVINO compiled models are created.

Embedders (``runtime.embedders``), the benchmark workers and, through the embedders, the
export gates and the deploy examples all open models here, so threads, precision hints,
providers and devices are set the same way everywhere and recorded the same way:

* **ONNX Runtime**: ``intra_op_num_threads`` = ``threads`` (inter-op 1, sequential execution),
  graph optimization ``ORT_ENABLE_ALL``, execution providers explicit (CPU unless asked).
* **ExecuTorch**: a ``.pte`` program's ``forward`` method through ExecuTorch's Python runtime
  (the XNNPACK delegate's kernels, as on Android and iOS), its thread pool set to ``threads``.
  That runtime loads libtorch: opening a ``.pte`` needs torch (importing this module does not).
* **OpenVINO**: ``INFERENCE_PRECISION_HINT`` explicit (``f32`` by default: on CPUs with bf16
  OpenVINO otherwise runs an "FP32" model in bf16), ``INFERENCE_NUM_THREADS`` = ``threads``,
  ``PERFORMANCE_HINT=LATENCY`` with one stream, and optionally a static batch
  (``model.reshape``) so the CPU plugin plans memory and picks kernels once.

Both return the session (or compiled model) and a ``settings`` dict of what was asked and,
for OpenVINO, what the compiled model reports back. A missing library, provider or device is
a :class:`BackendUnavailable`; a model that does not load is an ``EdgeDistillError``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from edgedistill.errors import EdgeDistillError

__all__ = ["BackendUnavailable", "onnxruntime_session", "openvino_compiled", "executorch_method", "OV_PRECISIONS",
           "one_line", "check_threads"]

OV_PRECISIONS = ("f32", "bf16", "f16")


class BackendUnavailable(EdgeDistillError):
    """The runtime, execution provider or device is not on this machine (not a bug)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The informative part of a runtime's multi-line message on one line: OpenVINO's start
    with "Exception from src/...cpp:NN:" lines that say nothing."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from ")] or lines
    text = " ".join(useful) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_threads(threads: int | None) -> int | None:
    """None (the runtime's default) or 1 .. ``limits.max_threads()``: thousands of threads
    oversubscribe the machine for everyone on it."""
    from edgedistill.limits import check_count

    return None if threads is None else check_count(threads, "threads")


def onnxruntime_session(path: str | Path, *, threads: int | None = None,
                        providers: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """An ``InferenceSession`` of ``path``; ``providers`` in priority order (default CPU only,
    so the choice is explicit rather than whatever the installed wheel prefers)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime cannot be imported ({exc}): pip install onnxruntime") from None
    threads = check_threads(threads)
    path = Path(path)
    if not path.is_file():
        raise EdgeDistillError(f"ONNX model not found: {path}")
    available = ort.get_available_providers()
    wanted = list(providers or ["CPUExecutionProvider"])
    unknown = [p for p in wanted if p not in available]
    if unknown:
        raise BackendUnavailable(f"ONNX Runtime provider {', '.join(unknown)} is not available here "
                                 f"(available: {', '.join(available)})")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EdgeDistillError(f"ONNX Runtime cannot load {path}: {one_line(exc)}") from None
    settings = {"providers": session.get_providers(), "intra_op_num_threads": threads, "inter_op_num_threads": 1,
                "execution_mode": "ORT_SEQUENTIAL", "graph_optimization_level": "ORT_ENABLE_ALL",
                "load_seconds": time.perf_counter() - started}
    return session, settings


def _openvino() -> Any:
    try:
        import openvino as ov  # lazily: ONNX Runtime-only installs never get here
    except ImportError:
        raise BackendUnavailable("OpenVINO is not installed: pip install openvino "
                                 "(or use the bundle's ONNX variant)") from None
    return ov


def _check_device(core: Any, device: str) -> None:
    available = list(core.available_devices)
    base = device.split(".")[0]
    virtual = base.split(":")[0] in ("AUTO", "MULTI", "HETERO", "BATCH")
    if not virtual and device not in available and not any(d.split(".")[0] == base for d in available):
        raise BackendUnavailable(f"OpenVINO device {device!r} is not available here "
                                 f"(available: {', '.join(available)})")


def _properties(core: Any, device: str, threads: int | None, precision: str | None, latency: bool,
                extra: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The compile properties asked for, minus those the device does not take (listed)."""
    wanted: dict[str, Any] = {}
    if latency:
        wanted.update({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    if precision is not None:
        if precision not in OV_PRECISIONS:
            raise EdgeDistillError(f"OpenVINO precision must be one of {', '.join(OV_PRECISIONS)}, got {precision!r}")
        wanted["INFERENCE_PRECISION_HINT"] = precision
    if threads is not None:
        wanted["INFERENCE_NUM_THREADS"] = threads
    wanted.update(extra or {})
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except Exception:  # virtual devices may not answer: pass everything on
        supported = set(wanted)
    props = {k: v for k, v in wanted.items() if k in supported}
    dropped = sorted(set(wanted) - set(props))
    if "INFERENCE_PRECISION_HINT" in dropped:
        raise BackendUnavailable(f"OpenVINO {device} does not take an inference precision hint, so "
                                 f"{precision} cannot be set explicitly")
    return props, dropped


def compiled_properties(compiled: Any) -> dict[str, Any]:
    """What a compiled model reports for the settings that decide its speed."""
    out = {}
    for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT",
                "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE"):
        try:
            value = compiled.get_property(key)
        except Exception:
            continue
        if hasattr(value, "get_type_name"):  # ov.Type -> "f32", "bf16"
            value = value.get_type_name()
        elif hasattr(value, "name") and not isinstance(value, (str, int, bool)):  # enums -> "LATENCY"
            value = value.name
        out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return out


def openvino_compiled(xml: str | Path, weights: str | Path | None = None, *, threads: int | None = None,
                      precision: str | None = "f32", device: str = "CPU", batch: int | None = None,
                      latency: bool = True, properties: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The IR ``xml`` (+ ``weights``, default the ``.bin`` beside it), or an ``.onnx`` file
    OpenVINO reads directly, compiled for ``device``. ``batch`` makes the input shape static at
    that batch size; ``precision=None`` leaves the device's default precision (bf16 on CPUs
    that have it)."""
    ov = _openvino()
    threads = check_threads(threads)
    xml = Path(xml)
    if not xml.is_file():
        raise EdgeDistillError(f"OpenVINO model not found: {xml}")
    if xml.suffix.lower() not in (".xml", ".onnx"):
        raise EdgeDistillError(f"an OpenVINO model is an .xml file (with its .bin), got {xml.name}")
    if xml.suffix.lower() == ".xml":
        weights = Path(weights) if weights is not None else xml.with_suffix(".bin")
        if not weights.is_file():
            raise EdgeDistillError(f"OpenVINO weights missing: {weights}")
    core = ov.Core()
    _check_device(core, device)
    props, dropped = _properties(core, device, threads, precision, latency, properties)
    started = time.perf_counter()
    try:
        model = core.read_model(str(xml), str(weights)) if weights is not None else core.read_model(str(xml))
        if batch is not None:
            shape = model.inputs[0].get_partial_shape()
            model.reshape({model.inputs[0]: ov.PartialShape([int(batch), *list(shape)[1:]])})
        compiled = core.compile_model(model, device, props)
    except Exception as exc:  # OpenVINO raises RuntimeError with a long message
        raise EdgeDistillError(f"OpenVINO cannot compile {xml} for {device}: {one_line(exc)}") from None
    settings = {"device": device, "properties": props, "unsupported_properties_dropped": dropped,
                "shapes": f"static batch {batch} (model.reshape)" if batch is not None else "dynamic batch",
                "load_seconds": time.perf_counter() - started, "compiled_properties": compiled_properties(compiled)}
    return compiled, settings


def executorch_method(path: str | Path, *, threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The ``forward`` method of the ExecuTorch program ``path`` (``.pte``), ready to execute;
    ``threads`` sizes the process-wide XNNPACK thread pool (None: ExecuTorch's default)."""
    threads = check_threads(threads)
    path = Path(path)
    if not path.is_file():
        raise EdgeDistillError(f"ExecuTorch program not found: {path}")
    try:
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise BackendUnavailable(f"ExecuTorch's runtime cannot be imported ({exc}): "
                                 "pip install 'edgedistill[executorch]'") from None
    if threads is not None:
        portable_lib._unsafe_reset_threadpool(threads)  # the one knob the Python runtime exposes
    started = time.perf_counter()
    try:
        method = Runtime.get().load_program(path).load_method("forward")
    except Exception as exc:  # RuntimeError with the runtime's status code
        raise EdgeDistillError(f"ExecuTorch cannot load {path}: {one_line(exc)}") from None
    settings = {"runtime": "executorch.runtime (Python)", "method": "forward",
                "threads": threads, "threads_read_back": int(portable_lib._threadpool_get_thread_count()),
                "load_seconds": time.perf_counter() - started}
    return method, settings
