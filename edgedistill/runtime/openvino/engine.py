"""OpenVINO compiled models, made the one way every caller uses (the embedders, the export
gates, the deploy examples, the bench worker), and the bench worker's engine.

Self-contained: the standard library, numpy and openvino, no edgedistill import, so the
bench worker (``runtime.worker``) runs it where edgedistill is not installed.

Settings: ``INFERENCE_PRECISION_HINT`` explicit (``f32`` by default: on CPUs with bf16 OpenVINO
otherwise runs an "FP32" model in bf16), ``INFERENCE_NUM_THREADS`` = ``threads``,
``PERFORMANCE_HINT=LATENCY`` with one stream, and optionally a static batch
(``model.reshape``) so the CPU plugin plans memory and picks kernels once. A missing library
raises ImportError, a missing device or an unsupported precision hint LookupError, a missing
file FileNotFoundError, a bad setting ValueError.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

import numpy as np

__all__ = ["PRECISIONS", "quiet", "compile_model", "import_runtime", "load"]


def quiet() -> None:
    """OpenVINO writes ``~/intel/stats`` and a client id on import; it and NNCF fall back to
    their built-in stub when ``openvino_telemetry`` cannot be imported."""
    if os.environ.get("EDGEDISTILL_THIRD_PARTY_TELEMETRY") != "1":
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # import -> ImportError

PRECISIONS = ("f32", "bf16", "f16")


def _check_device(core: Any, device: str) -> None:
    available = list(core.available_devices)
    base = device.split(".")[0]
    virtual = base.split(":")[0] in ("AUTO", "MULTI", "HETERO", "BATCH")
    if not virtual and device not in available and not any(d.split(".")[0] == base for d in available):
        raise LookupError(f"OpenVINO device {device!r} is not available here (available: {', '.join(available)})")


def _properties(core: Any, device: str, threads: int | None, precision: str | None, latency: bool,
                extra: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The compile properties asked for, minus those the device does not take (listed)."""
    wanted: dict[str, Any] = {}
    if latency:
        wanted.update({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        wanted["INFERENCE_PRECISION_HINT"] = precision
    if threads is not None:
        wanted["INFERENCE_NUM_THREADS"] = int(threads)
    wanted.update(extra or {})
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except Exception:  # virtual devices may not answer: pass everything on
        supported = set(wanted)
    props = {k: v for k, v in wanted.items() if k in supported}
    dropped = sorted(set(wanted) - set(props))
    if "INFERENCE_PRECISION_HINT" in dropped:
        raise LookupError(f"OpenVINO {device} does not take an inference precision hint, so {precision} cannot be "
                          "set explicitly")
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


def compile_model(xml: str, weights: str | None = None, *, threads: int | None = None, precision: str | None = "f32",
                  device: str = "CPU", batch: int | None = None, latency: bool = True,
                  properties: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The IR ``xml`` (+ ``weights``, default the ``.bin`` beside it), or an ``.onnx`` file
    OpenVINO reads directly, compiled for ``device``, and the settings. ``batch`` makes the
    input shape static at that batch size; ``precision=None`` leaves the device's default
    precision (bf16 on CPUs that have it)."""
    import openvino as ov

    if not os.path.isfile(xml):
        raise FileNotFoundError(f"OpenVINO model not found: {xml}")
    suffix = os.path.splitext(xml)[1].lower()
    if suffix not in (".xml", ".onnx"):
        raise ValueError(f"an OpenVINO model is an .xml file (with its .bin), got {os.path.basename(xml)}")
    if suffix == ".xml":
        weights = weights if weights is not None else os.path.splitext(xml)[0] + ".bin"
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"OpenVINO weights missing: {weights}")
    core = ov.Core()
    _check_device(core, device)
    props, dropped = _properties(core, device, threads, precision, latency, properties)
    started = time.perf_counter()
    model = core.read_model(str(xml), str(weights)) if weights is not None else core.read_model(str(xml))
    if batch is not None:
        shape = model.inputs[0].get_partial_shape()
        model.reshape({model.inputs[0]: ov.PartialShape([int(batch), *list(shape)[1:]])})
    compiled = core.compile_model(model, device, props)
    settings = {"device": device, "properties": props, "unsupported_properties_dropped": dropped,
                "shapes": f"static batch {batch} (model.reshape)" if batch is not None else "dynamic batch",
                "load_seconds": time.perf_counter() - started, "compiled_properties": compiled_properties(compiled)}
    return compiled, settings


def import_runtime() -> None:
    import openvino  # noqa: F401


def load(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[np.ndarray], Callable[[], Any]], dict[str, Any]]:
    """The bench worker's engine (``runtime.worker``): a compiled model per batch size with
    static shapes (``static_shapes``), else one for every batch size."""
    info: dict[str, Any] = {}
    static = bool(spec.get("static_shapes", True))
    compiled: dict[int, Any] = {}

    def prepare(x: np.ndarray) -> Callable[[], Any]:
        batch = len(x)
        key = batch if static else 0
        if key not in compiled:
            compiled[key], settings = compile_model(
                spec["model"], spec.get("weights"), threads=int(spec["threads"]),
                precision=spec.get("inference_precision"), device=spec.get("device") or "CPU",
                batch=batch if static else None, properties=spec.get("properties"))
            load_seconds = settings.pop("load_seconds")
            if "load_seconds" not in info:
                info["load_seconds"] = load_seconds
                info["settings"] = settings
            if static:
                info.setdefault("load_seconds_per_batch", {})[str(batch)] = round(load_seconds, 4)
        c = compiled[key]
        request = c.create_infer_request()
        output = c.outputs[0]

        def run() -> np.ndarray:
            result = request.infer({0: x}, share_inputs=True)  # no copy per call; the closure keeps x alive
            return np.array(result[output], dtype=np.float32, copy=True)

        return run

    return prepare, info
