"""One benchmark configuration in a fresh process: ``python -m edgedistill.bench.worker SPEC``.

The runner starts one worker per (backend, variant, precision, threads), so that runtimes,
thread pools, allocators and imports never share a process: a worker's peak memory and
cold start are its own, and torch is imported only by the torch worker (the others stay
torch-free, as on a device without torch).

``SPEC`` is a JSON object, as the first argument or, without arguments, the first line of
stdin::

    {"backend": "torch" | "onnxruntime" | "openvino", "model": path, "weights": path | null,
     "precision": "fp32" | "bf16" | "fp16" | "int8", "inference_precision": "f32" | "bf16" | null,
     "threads": 2, "device": "CPU" | OpenVINO device | ONNX Runtime provider,
     "batches": [1, 8], "input": {"name": str, "shape": [3, H, W]},
     "sample": png path | null, "preprocessing": {...} | null,
     "static_shapes": true, "warmup": 5, "runs": 50 | null, "seconds": 2.0 | null, "min_runs": 5,
     "mode": "oneshot" | "rounds", "properties": {...} (openvino: further compile properties),
     # torch only: "img_size": [H, W], "weights_sha256": hex | null}

Replies are JSON lines on stdout (library output goes to stderr, so it cannot corrupt them).
``oneshot``: warm up and time every batch size, reply one ``{"event": "result", ...}``.
``rounds``: load and warm up, reply ``{"event": "ready", ...}``, then answer commands read
from stdin until ``exit``::

    {"cmd": "run", "batch": 1, "runs": 20}        -> {"event": "times", "batch": 1, "ms": [...]}
    {"cmd": "run", "batch": 1, "seconds": 0.5}    (as many runs as fit, at least min_runs)
    {"cmd": "exit"}                               -> {"event": "exit", "peak_rss_all_mb": ...}

so the runner can interleave the configurations round by round (machine noise then hits all
of them alike) while each still runs alone. Each ``run`` starts with one untimed inference:
caches and thread pools are cold after another process ran. Failures reply
``{"event": "error", "error": "one line", "unavailable": bool}`` (``unavailable``: the
backend, the weights or the device are not there, as opposed to a failure while running).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

__all__ = ["main", "Unavailable", "timed_runs", "peak_rss_mb", "current_rss_mb", "one_line"]


class Unavailable(Exception):
    """The configuration cannot run here (missing library, weights or device): not a bug."""


# ----------------------------------------------------------------------------- memory, timing


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, MiB.

    Linux: ``VmHWM``, the high-water mark of this process's own address space. Not
    ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries it across fork/exec, so a worker
    started by a 3 GB parent would report 3 GB. Windows: psutil's peak working set; macOS
    and the BSDs: ``ru_maxrss`` (bytes on macOS, KiB elsewhere).
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import psutil

        info = psutil.Process().memory_info()
        if hasattr(info, "peak_wset"):
            return round(info.peak_wset / 2**20, 1)
    except ImportError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
    except ImportError:
        return None


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as handle:
            return round(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 1)
    except ImportError:
        return None


def timed_runs(run: Callable[[], Any], runs: int | None = None, seconds: float | None = None,
               min_runs: int = 1) -> list[float]:
    """Milliseconds of each call of ``run``: ``runs`` calls, or calls until ``seconds`` have
    passed and at least ``min_runs`` were made."""
    if runs is None and seconds is None:
        raise ValueError("timed_runs needs runs or seconds")
    times: list[float] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9) if seconds is not None else None
    while True:
        start = clock()
        run()
        end = clock()
        times.append((end - start) / 1e6)
        if runs is not None and len(times) >= runs:
            return times
        if deadline is not None and end >= deadline and len(times) >= min_runs:
            return times


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The informative part of a runtime's multi-line message on one line: OpenVINO's start
    with "Exception from src/...cpp:NN:" lines that say nothing."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from ")] or lines
    text = " ".join(useful) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------- inputs


def make_inputs(spec: dict[str, Any]) -> np.ndarray:
    """One (3, H, W) float32 image: the bundle's sample through its preprocessing when there
    is one (a real image), else seeded noise. Batches repeat it."""
    shape = tuple(int(v) for v in spec["input"]["shape"])
    sample, prep = spec.get("sample"), spec.get("preprocessing")
    if sample and prep and os.path.isfile(sample):
        try:
            from edgedistill.runtime.preprocess import preprocess

            image = preprocess(sample, prep)
            if image.shape == shape:
                return image.astype(np.float32)
        except Exception:  # a sample that does not fit the model is not worth failing for
            pass
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def batch_of(image: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(image, (batch, *image.shape)), dtype=np.float32)


# ----------------------------------------------------------------------------- backends
#
# Each returns (prepare, info): ``prepare(batch)`` builds (once) what serves that batch size
# and returns a zero-argument callable doing one inference, including handing the result
# back as a numpy array, as an app would.


def _torch(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[int], Callable[[], Any]], dict[str, Any]]:
    started = time.perf_counter()
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(f"torch cannot be imported ({exc})") from None
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (cannot happen in a fresh process, but harmless)
        pass
    try:
        from edgedistill.models.backbone_io import load_backbone
    except ImportError as exc:
        raise Unavailable(f"the torch baseline needs timm and safetensors ({exc})") from None
    info: dict[str, Any] = {"import_seconds": time.perf_counter() - started}
    info["rss_after_import_mb"] = current_rss_mb()

    started = time.perf_counter()
    try:
        model, meta = load_backbone(spec["model"], role="student")
    except Exception as exc:  # EdgeDistillError (missing, changed) or a broken file
        raise Unavailable(f"cannot load the student from {spec['model']}: {exc}") from None
    expected = spec.get("weights_sha256")
    if expected and meta.get("sha256") != expected:
        raise Unavailable(f"{meta.get('weights_path')} changed since the bundle was exported (sha256 differs)")
    size = tuple(int(v) for v in spec.get("img_size") or image.shape[1:])
    if tuple(model.patch_embed.img_size) != size:
        model.set_input_size(img_size=size)  # as export did for a bundle at another size
    model.eval()
    info["load_seconds"] = time.perf_counter() - started

    bf16 = spec.get("inference_precision") == "bf16"
    info["settings"] = {"torch.set_num_threads": threads, "torch.set_num_interop_threads": 1,
                        "mode": "eager, torch.inference_mode", "autocast": "cpu bfloat16" if bf16 else None,
                        "num_threads_read_back": torch.get_num_threads(),
                        "fused_attention": bool(getattr(model.blocks[0].attn, "fused_attn", False))}

    def prepare(batch: int) -> Callable[[], Any]:
        x = torch.from_numpy(batch_of(image, batch))

        def run() -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model.forward_features(x)[:, 0].float().numpy()

        return run

    return prepare, info


def _onnxruntime(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[int], Callable[[], Any]], dict[str, Any]]:
    started = time.perf_counter()
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Unavailable(f"onnxruntime cannot be imported ({exc})") from None
    info: dict[str, Any] = {"import_seconds": time.perf_counter() - started, "rss_after_import_mb": current_rss_mb()}
    provider = spec.get("device") or "CPUExecutionProvider"
    available = ort.get_available_providers()
    if provider not in available:
        raise Unavailable(f"ONNX Runtime provider {provider} is not available (available: {', '.join(available)})")
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    threads = int(spec["threads"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(spec["model"], sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's own exception types
        raise RuntimeError(f"ONNX Runtime cannot load {spec['model']}: {one_line(exc)}") from None
    info["load_seconds"] = time.perf_counter() - started
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    info["settings"] = {"providers": session.get_providers(), "intra_op_num_threads": threads,
                        "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
                        "graph_optimization_level": "ORT_ENABLE_ALL", "shapes": "dynamic batch (one session)"}

    def prepare(batch: int) -> Callable[[], Any]:
        feed = {input_name: batch_of(image, batch)}

        def run() -> np.ndarray:
            return session.run([output_name], feed)[0]

        return run

    return prepare, info


def _openvino(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[int], Callable[[], Any]], dict[str, Any]]:
    started = time.perf_counter()
    try:
        import openvino as ov
    except ImportError as exc:
        raise Unavailable(f"openvino cannot be imported ({exc})") from None
    info: dict[str, Any] = {"import_seconds": time.perf_counter() - started, "rss_after_import_mb": current_rss_mb()}
    core = ov.Core()
    device = spec.get("device") or "CPU"
    base = device.split(".")[0]
    available = list(core.available_devices)
    if device not in available and not any(d.split(".")[0] == base for d in available):
        raise Unavailable(f"OpenVINO device {device} is not available (available: {', '.join(available)})")
    wanted: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                              "INFERENCE_NUM_THREADS": int(spec["threads"])}
    if spec.get("inference_precision"):
        wanted["INFERENCE_PRECISION_HINT"] = spec["inference_precision"]
    wanted.update(spec.get("properties") or {})  # further compile properties, recorded with the rest
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except Exception:
        supported = set(wanted)
    props = {k: v for k, v in wanted.items() if k in supported}
    dropped = sorted(set(wanted) - set(props))
    if "INFERENCE_PRECISION_HINT" in dropped:
        raise Unavailable(f"OpenVINO {device} does not take an inference precision hint, so "
                          f"{spec['inference_precision']} cannot be set explicitly")
    static = bool(spec.get("static_shapes", True))
    model_path, weights = spec["model"], spec.get("weights")
    compiled: dict[int, Any] = {}
    load: dict[int, float] = {}

    def compile_for(batch: int) -> Any:
        started = time.perf_counter()
        model = core.read_model(model_path, weights) if weights else core.read_model(model_path)
        if static:
            # a static input shape lets the CPU plugin plan memory and pick kernels once
            model.reshape({model.inputs[0]: ov.PartialShape([batch, *image.shape])})
        try:
            result = core.compile_model(model, device, props)
        except Exception as exc:
            raise RuntimeError(f"OpenVINO cannot compile {model_path} for {device}: {one_line(exc)}") from None
        load[batch] = time.perf_counter() - started
        return result

    def read_back(c: Any) -> dict[str, Any]:
        out = {}
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT",
                    "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE"):
            try:
                value = c.get_property(key)
            except Exception:
                continue
            if hasattr(value, "get_type_name"):  # ov.Type -> "f32", "bf16"
                value = value.get_type_name()
            elif hasattr(value, "name") and not isinstance(value, (str, int, bool)):  # enums -> "LATENCY"
                value = value.name
            out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        return out

    info["settings"] = {"device": device, "properties": props, "unsupported_properties_dropped": dropped,
                        "shapes": "static per batch size (model.reshape)" if static else "dynamic batch"}

    def prepare(batch: int) -> Callable[[], Any]:
        key = batch if static else 0
        if key not in compiled:
            compiled[key] = compile_for(batch)
            if "load_seconds" not in info:
                info["load_seconds"] = load[batch]
                info["settings"]["compiled_properties"] = read_back(compiled[key])
            if static:
                info.setdefault("load_seconds_per_batch", {})[str(batch)] = round(load[batch], 4)
        c = compiled[key]
        request = c.create_infer_request()
        output = c.outputs[0]
        x = batch_of(image, batch)  # shared with OpenVINO (no copy per call); the closure keeps it alive

        def run() -> np.ndarray:
            result = request.infer({0: x}, share_inputs=True)
            return np.array(result[output], dtype=np.float32, copy=True)

        return run

    return prepare, info


BACKENDS = {"torch": _torch, "onnxruntime": _onnxruntime, "openvino": _openvino}


# ----------------------------------------------------------------------------- protocol


class _Channel:
    """JSON lines to the real stdout; fd 1 itself is pointed at stderr, so that whatever a
    library prints (OpenVINO, NNCF, C++ logs) cannot corrupt the replies."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()


def _load(spec: dict[str, Any]) -> tuple[dict[int, Callable[[], Any]], dict[str, Any]]:
    """Import, create the session(s), first inference, warm-up of every batch size."""
    backend = spec["backend"]
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    image = make_inputs(spec)
    prepare, info = BACKENDS[backend](spec, image)
    batches = [int(b) for b in spec["batches"]]
    warmup = int(spec.get("warmup", 5))
    runners: dict[int, Callable[[], Any]] = {}
    for i, batch in enumerate(batches):
        runners[batch] = prepare(batch)
        if i == 0:
            start = time.perf_counter()
            out = runners[batch]()
            info["first_run_ms"] = (time.perf_counter() - start) * 1e3
            info["output_shape"] = list(np.asarray(out).shape)
            if not np.all(np.isfinite(out)):
                raise RuntimeError("the model returned non-finite outputs")
        for _ in range(warmup):
            runners[batch]()
        if i == 0:
            # what one process serving the first batch size holds at its peak
            info["peak_rss_mb"] = peak_rss_mb()
    info["peak_rss_all_mb"] = peak_rss_mb()
    info["warmup"] = warmup
    info["pid"] = os.getpid()
    return runners, info


def _run_command(runners: dict[int, Callable[[], Any]], command: dict[str, Any], spec: dict[str, Any]) -> list[float]:
    run = runners[int(command["batch"])]
    for _ in range(int(command.get("rewarm", 1))):
        run()
    return timed_runs(run, runs=command.get("runs"), seconds=command.get("seconds"),
                      min_runs=int(command.get("min_runs", spec.get("min_runs", 1))))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    channel = _Channel()
    try:
        spec = json.loads(argv[0] if argv else sys.stdin.readline())
    except (json.JSONDecodeError, IndexError) as exc:
        channel.send({"event": "error", "error": f"bad worker spec: {exc}", "unavailable": False})
        return 2
    try:
        runners, info = _load(spec)
    except Unavailable as exc:
        channel.send({"event": "error", "error": str(exc), "unavailable": True})
        return 0
    except Exception as exc:  # reported as a failed row, with the traceback on stderr
        traceback.print_exc()
        channel.send({"event": "error", "error": f"{type(exc).__name__}: {one_line(exc)}", "unavailable": False})
        return 1

    if spec.get("mode", "oneshot") == "oneshot":
        times = {}
        for batch in runners:
            runs = spec.get("runs") or (None if spec.get("seconds") else 20)
            times[str(batch)] = _run_command(runners, {"batch": batch, "runs": runs,
                                                       "seconds": spec.get("seconds"), "rewarm": 0}, spec)
        info["peak_rss_all_mb"] = peak_rss_mb()
        channel.send({"event": "result", **info, "times": times})
        return 0

    channel.send({"event": "ready", **info})
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("cmd") == "exit":
            break
        try:
            ms = _run_command(runners, command, spec)
        except Exception as exc:
            traceback.print_exc()
            channel.send({"event": "error", "error": f"{type(exc).__name__}: {exc}", "unavailable": False})
            return 1
        channel.send({"event": "times", "batch": int(command["batch"]), "ms": ms})
    channel.send({"event": "exit", "peak_rss_all_mb": peak_rss_mb()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
