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

from edgedistill.runtime.sessions import one_line

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
    import psutil

    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):
        return round(info.peak_wset / 2**20, 1)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def current_rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


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


def _session_or_unavailable(open_session: Callable[..., tuple[Any, dict[str, Any]]], *args: Any,
                            **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    from edgedistill.runtime.sessions import BackendUnavailable

    try:
        return open_session(*args, **kwargs)
    except BackendUnavailable as exc:
        raise Unavailable(str(exc)) from None


def _onnxruntime(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[int], Callable[[], Any]], dict[str, Any]]:
    from edgedistill.runtime.sessions import onnxruntime_session

    started = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401  (timed apart from the session)
    except ImportError as exc:
        raise Unavailable(f"onnxruntime cannot be imported ({exc})") from None
    info: dict[str, Any] = {"import_seconds": time.perf_counter() - started, "rss_after_import_mb": current_rss_mb()}
    provider = spec.get("device") or "CPUExecutionProvider"
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    session, settings = _session_or_unavailable(onnxruntime_session, spec["model"], threads=int(spec["threads"]),
                                                providers=providers)
    info["load_seconds"] = settings.pop("load_seconds")
    info["settings"] = {**settings, "shapes": "dynamic batch (one session)"}
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def prepare(batch: int) -> Callable[[], Any]:
        feed = {input_name: batch_of(image, batch)}

        def run() -> np.ndarray:
            return session.run([output_name], feed)[0]

        return run

    return prepare, info


def _openvino(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[int], Callable[[], Any]], dict[str, Any]]:
    from edgedistill.runtime.sessions import openvino_compiled

    started = time.perf_counter()
    try:
        import openvino  # noqa: F401  (timed apart from compiling)
    except ImportError as exc:
        raise Unavailable(f"openvino cannot be imported ({exc})") from None
    info: dict[str, Any] = {"import_seconds": time.perf_counter() - started, "rss_after_import_mb": current_rss_mb()}
    static = bool(spec.get("static_shapes", True))
    compiled: dict[int, Any] = {}

    def prepare(batch: int) -> Callable[[], Any]:
        key = batch if static else 0
        if key not in compiled:
            compiled[key], settings = _session_or_unavailable(
                openvino_compiled, spec["model"], spec.get("weights"), threads=int(spec["threads"]),
                precision=spec.get("inference_precision"), device=spec.get("device") or "CPU",
                batch=batch if static else None, properties=spec.get("properties"))
            load = settings.pop("load_seconds")
            if "load_seconds" not in info:
                info["load_seconds"] = load
                info["settings"] = settings
            if static:
                info.setdefault("load_seconds_per_batch", {})[str(batch)] = round(load, 4)
        c = compiled[key]
        request = c.create_infer_request()
        output = c.outputs[0]
        x = batch_of(image, batch)  # shared with OpenVINO (no copy per call); the closure keeps it alive

        def run() -> np.ndarray:
            result = request.infer({0: x}, share_inputs=True)
            return np.array(result[output], dtype=np.float32, copy=True)

        return run

    return prepare, info


def _executorch(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[int], Callable[[], Any]], dict[str, Any]]:
    """A ``.pte`` through ExecuTorch's Python runtime; its import loads torch (timed here)."""
    from edgedistill.runtime.sessions import executorch_method

    started = time.perf_counter()
    try:
        import executorch.runtime  # noqa: F401  (timed apart from loading the program)
        import torch
    except ImportError as exc:
        raise Unavailable(f"ExecuTorch cannot be imported ({exc})") from None
    info: dict[str, Any] = {"import_seconds": time.perf_counter() - started, "rss_after_import_mb": current_rss_mb()}
    method, settings = _session_or_unavailable(executorch_method, spec["model"], threads=int(spec["threads"]))
    info["load_seconds"] = settings.pop("load_seconds")
    info["settings"] = {**settings, "delegate": "XNNPACK", "shapes": "dynamic batch (one program)"}

    def prepare(batch: int) -> Callable[[], Any]:
        x = (torch.from_numpy(batch_of(image, batch)),)

        def run() -> np.ndarray:
            return method.execute(x)[0].numpy()

        return run

    return prepare, info


BACKENDS = {"torch": _torch, "onnxruntime": _onnxruntime, "openvino": _openvino, "executorch": _executorch}


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
    from edgedistill.utils import quiet_third_party_counters

    quiet_third_party_counters()  # before any runtime is imported (see the CLI)
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
