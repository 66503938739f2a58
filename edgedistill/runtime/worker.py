"""The benchmark worker: one measured configuration in a fresh process, speaking JSON lines.

    python -m edgedistill.runtime.worker SPEC        (or SPEC as the first line of stdin)

Self-contained on purpose: the standard library and numpy only, and no edgedistill import, so
this file and a runtime's engine (``runtime/<name>/engine.py``, equally self-contained) run
as they are where edgedistill is not installed (a device reached over SSH). The engine is
imported by the module name in ``SPEC["engine"]``: a package path here, a bare module name
beside this file elsewhere.

``SPEC`` is a JSON object::

    {"engine": "edgedistill.runtime.<name>.engine", "model": path, "weights": path | null,
     "precision": "fp32" | "bf16" | "fp16" | "int8", "inference_precision": "f32" | "bf16" | null,
     "threads": 2, "device": what the runtime calls the device,
     "batches": [1, 8], "input": {"name": str, "shape": [3, H, W]},
     "input_file": .npy of one (3, H, W) float32 image | null (then seeded noise),
     "static_shapes": true, "warmup": 5, "runs": 50 | null, "seconds": 2.0 | null, "min_runs": 5,
     "call_batch": 1 | null, "mode": "oneshot" | "rounds", ...engine-specific keys}

``call_batch``: the most images one call of the model takes (the manifest entry's ``batch``: a
static-batch model, or a dynamic-INT8 one validated one image per call); a larger batch size
is timed as that many calls, as an app runs it.

An engine module defines ``import_runtime()`` (imports its library: timed, the cold start's
first part) and ``load(spec, image) -> (prepare, info)``: ``prepare(x)``, given the input
batch (B, 3, H, W) float32, builds (once per batch size) what serves it and returns a
zero-argument callable doing one inference on ``x``, handing the result back as a numpy array
as an app would; ``info`` holds ``load_seconds``
(session creation) and ``settings`` (what was set, and read back). An engine may define
``quiet()``: it runs first, before its library is imported, and keeps the library from
writing usage counters into ``$HOME`` (unless ``EDGEDISTILL_THIRD_PARTY_TELEMETRY=1``) and
native log lines onto the terminal. An engine signals a
configuration that cannot run here (not a failure) with ``ImportError`` (library missing),
``LookupError`` (device or provider missing) or ``FileNotFoundError`` (model missing).

Replies are JSON lines on stdout (library output goes to stderr, so it cannot corrupt them).
``oneshot``: warm up and time every batch size, reply one ``{"event": "result", ...}``.
``rounds``: load and warm up, reply ``{"event": "ready", ...}``, then answer commands read
from stdin until ``exit``::

    {"cmd": "run", "batch": 1, "runs": 20}        -> {"event": "times", "batch": 1, "ms": [...]}
    {"cmd": "run", "batch": 1, "seconds": 0.5}    (as many runs as fit, at least min_runs)
    {"cmd": "exit"}                               -> {"event": "exit", "peak_rss_all_mb": ...}

so the runner can interleave configurations round by round (machine noise then hits all of
them alike) while each still runs alone. Each ``run`` starts with one untimed inference:
caches and thread pools are cold after another process ran. Failures reply
``{"event": "error", "error": "one line", "unavailable": bool}``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

__all__ = ["main", "timed_runs", "peak_rss_mb", "current_rss_mb", "one_line", "UNAVAILABLE", "batch_of"]

# what an engine raises for a configuration that cannot run here (as opposed to a failure)
UNAVAILABLE = (ImportError, LookupError, FileNotFoundError)
# "1": leave the runtimes' usage counters on (an engine's ``quiet()`` turns them off otherwise)
TELEMETRY_OPT_IN = "EDGEDISTILL_THIRD_PARTY_TELEMETRY"
Prepare = Callable[[np.ndarray], Callable[[], Any]]


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The informative part of a runtime's multi-line message on one line (C++ runtimes start
    theirs with "Exception from src/...cpp:NN:" lines that say nothing)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from ")] or lines
    text = " ".join(useful) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    started by a 3 GB parent would report 3 GB. Elsewhere ``ru_maxrss`` (bytes on macOS, KiB
    on the BSDs); None where neither exists (Windows)."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def current_rss_mb() -> float | None:
    """Resident set size now, MiB (Linux ``VmRSS``; None elsewhere)."""
    return _proc_status_mb("VmRSS")


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


def make_input(spec: dict[str, Any]) -> np.ndarray:
    """One (3, H, W) float32 image: ``input_file`` (the bundle's sample, preprocessed by the
    runner) when it fits the model, else seeded noise. Batches repeat it."""
    shape = tuple(int(v) for v in spec["input"]["shape"])
    path = spec.get("input_file")
    if path and os.path.isfile(path):
        image = np.load(path)
        if image.shape == shape:
            return image.astype(np.float32)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def batch_of(image: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(image, (batch, *image.shape)), dtype=np.float32)


# ----------------------------------------------------------------------------- protocol


class _Channel:
    """JSON lines to the real stdout; fd 1 itself is pointed at stderr, so that whatever a
    library prints (quantizers, C++ logs) cannot corrupt the replies."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()


def _load(spec: dict[str, Any]) -> tuple[dict[int, Callable[[], Any]], dict[str, Any]]:
    """Import the engine, create the session(s), first inference, warm-up of every batch size."""
    image = make_input(spec)
    engine = importlib.import_module(spec["engine"])
    if hasattr(engine, "quiet"):
        engine.quiet()  # before its library is imported, as the CLI does
    started = time.perf_counter()
    engine.import_runtime()
    imported = {"import_seconds": time.perf_counter() - started, "rss_after_import_mb": current_rss_mb()}
    prepare: Prepare
    prepare, info = engine.load(spec, image)
    info.update(imported)
    batches = [int(b) for b in spec["batches"]]
    warmup = int(spec.get("warmup", 5))
    runners: dict[int, Callable[[], Any]] = {}
    for i, batch in enumerate(batches):
        if i == 0:
            runners[batch] = _runner(prepare, image, batch, spec.get("call_batch"))
            start = time.perf_counter()
            out = runners[batch]()
            info["first_run_ms"] = (time.perf_counter() - start) * 1e3
            info["output_shape"] = list(np.asarray(out).shape)
            if not np.all(np.isfinite(out)):
                raise RuntimeError("the model returned non-finite outputs")
            for _ in range(warmup):
                runners[batch]()
            # what one process serving the first batch size holds at its peak
            info["peak_rss_mb"] = peak_rss_mb()
            continue
        try:  # a larger batch the model does not take fails alone: the first one's figures stand
            runners[batch] = _runner(prepare, image, batch, spec.get("call_batch"))
            for _ in range(max(warmup, 1)):
                runners[batch]()
        except Exception as exc:
            traceback.print_exc()
            runners.pop(batch, None)
            info.setdefault("failed_batches", {})[str(batch)] = f"{type(exc).__name__}: {one_line(exc)}"
    info["peak_rss_all_mb"] = peak_rss_mb()
    info["warmup"] = warmup
    if spec.get("call_batch"):  # the report says that a larger batch ran as several calls
        info.setdefault("settings", {})["images_per_call"] = int(spec["call_batch"])
    info["pid"] = os.getpid()
    return runners, info


def _runner(prepare: Prepare, image: np.ndarray, batch: int, call_batch: int | None) -> Callable[[], Any]:
    """One inference of ``batch`` images: one call, or calls of at most ``call_batch``."""
    if not call_batch or batch <= int(call_batch):
        return prepare(batch_of(image, batch))
    size = int(call_batch)
    calls = [prepare(batch_of(image, min(size, batch - start))) for start in range(0, batch, size)]

    def run() -> np.ndarray:
        return np.concatenate([np.asarray(call()) for call in calls])

    return run


def _run_command(runners: dict[int, Callable[[], Any]], command: dict[str, Any], spec: dict[str, Any]) -> list[float]:
    run = runners[int(command["batch"])]
    for _ in range(int(command.get("rewarm", 1))):
        run()
    return timed_runs(run, runs=command.get("runs"), seconds=command.get("seconds"),
                      min_runs=int(command.get("min_runs", spec.get("min_runs", 1))))


def _serve(channel: _Channel, runners: dict[int, Callable[[], Any]], info: dict[str, Any],
           spec: dict[str, Any]) -> int:
    """The ``rounds`` mode: ready, then timed runs on command until ``exit``."""
    channel.send({"event": "ready", **info})
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("cmd") == "exit":
            break
        try:
            ms = _run_command(runners, command, spec)
        except Exception as exc:  # that batch size fails; the worker still serves the others
            traceback.print_exc()
            channel.send({"event": "error", "error": f"{type(exc).__name__}: {one_line(exc)}", "unavailable": False})
            continue
        channel.send({"event": "times", "batch": int(command["batch"]), "ms": ms})
    channel.send({"event": "exit", "peak_rss_all_mb": peak_rss_mb()})
    return 0


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
    except UNAVAILABLE as exc:
        channel.send({"event": "error", "error": one_line(exc), "unavailable": True})
        return 0
    except Exception as exc:  # reported as a failed row, with the traceback on stderr
        traceback.print_exc()
        channel.send({"event": "error", "error": f"{type(exc).__name__}: {one_line(exc)}", "unavailable": False})
        return 1

    if spec.get("mode", "oneshot") == "rounds":
        return _serve(channel, runners, info, spec)
    times = {}
    for batch in runners:
        runs = spec.get("runs") or (None if spec.get("seconds") else 20)
        times[str(batch)] = _run_command(runners, {"batch": batch, "runs": runs, "seconds": spec.get("seconds"),
                                                   "rewarm": 0}, spec)
    info["peak_rss_all_mb"] = peak_rss_mb()
    channel.send({"event": "result", **info, "times": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
