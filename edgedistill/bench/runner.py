"""``run_bench``: every variant of a bundle on every available backend, each in its own fresh
process, interleaved round by round, against torch eager FP32 (SPEC §9).

How a measurement is made, and why:

* **One fresh process per row** (backend x variant x precision x threads), started one after
  another so that imports and session creation (the cold start) are timed alone. Each row's
  peak memory is its own process's (``VmHWM``: Linux carries ``ru_maxrss`` over from the
  parent across fork/exec), and no runtime shares thread pools or allocators with another.
  Only the torch row imports torch.
* **Interleaved rounds.** All rows stay loaded (idle, blocked on a pipe) while the runner asks
  them in turn for a slice of timed runs, rotating the order every round; each slice starts
  with one untimed run. Noise from a shared machine (other processes, frequency changes)
  then hits every row alike, and the ratios stay meaningful even when absolute figures drift.
  ``round_p50_ms`` per row shows how much they drifted.
* **Threads fixed and recorded**: ONNX Runtime ``intra_op_num_threads`` (inter-op 1, sequential),
  OpenVINO ``INFERENCE_NUM_THREADS`` (``PERFORMANCE_HINT=LATENCY``, one stream),
  ``torch.set_num_threads`` (inter-op 1).
* **Precision explicit**: OpenVINO fp32 rows compile with ``INFERENCE_PRECISION_HINT=f32``
  (CPUs with bf16 would otherwise run them in bf16); the bf16 rows (OpenVINO hint ``bf16``,
  torch CPU autocast) exist only where the CPU has native bf16; int8 variants run with the
  hint their manifest records (what the accuracy gate validated).
* **Static shapes** (default): OpenVINO compiles one model per batch size with a static input
  shape (``model.reshape``), what an app serving a fixed batch does. ``static_shapes=False``
  keeps the bundle's dynamic batch.
* **Baseline**: torch eager FP32 (``torch.inference_mode``, the same threads), rebuilt from the
  student's safetensors: the bundle's own ``student.json``/``.safetensors`` when it holds
  them, else the run directory its ``provenance`` names (checked against the recorded
  sha256). Without torch or the weights the baseline is ONNX Runtime FP32, and the report
  says why.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgedistill.errors import EdgeDistillError

__all__ = ["run_bench", "BACKENDS", "PRECISIONS", "Row", "plan_rows", "resolve_device", "student_source",
           "parse_list", "summarize_times", "REPORT_FORMAT"]

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
REPORT_FORMAT = "edgedistill-bench/1"
SETTLE_SECONDS = 0.05
_ORT_ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],
    "gpu": ["CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider", "MIGraphXExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider"], "trt": ["TensorrtExecutionProvider"],
    "rocm": ["ROCMExecutionProvider"], "migraphx": ["MIGraphXExecutionProvider"],
    "dml": ["DmlExecutionProvider"], "directml": ["DmlExecutionProvider"],
    "coreml": ["CoreMLExecutionProvider"], "xnnpack": ["XnnpackExecutionProvider"],
    "npu": ["QNNExecutionProvider", "VitisAIExecutionProvider"], "qnn": ["QNNExecutionProvider"],
    "openvino": ["OpenVINOExecutionProvider"],
}


# ----------------------------------------------------------------------------- options


def parse_list(value: str | Iterable[Any] | None, name: str, kind: type = str,
               choices: Sequence[str] | None = None) -> list[Any] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (deduplicated, in order), checked; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[Any] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if kind is int:
            try:
                parsed: Any = int(text)
            except ValueError:
                raise EdgeDistillError(f"--{name} takes comma-separated integers, got {text!r}") from None
            if parsed < 1:
                raise EdgeDistillError(f"--{name} values must be >= 1, got {parsed}")
        else:
            parsed = text.lower()
            if choices is not None and parsed not in choices:
                raise EdgeDistillError(f"unknown --{name} value {text!r}: choose from {', '.join(choices)}")
        if parsed not in out:
            out.append(parsed)
    if not out:
        raise EdgeDistillError(f"--{name} is empty")
    return out


def resolve_device(device: str, devices: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Map ``--device`` to what each backend calls it.

    Returns ``(targets, reasons)``: ``targets[backend]`` is the torch device, the ONNX Runtime
    execution provider or the OpenVINO device; ``reasons[backend]`` says why a backend cannot
    serve it. A non-CPU device no backend has is an EdgeDistillError listing what is there.
    """
    wanted = device.strip()
    key = wanted.lower()
    targets: dict[str, str] = {}
    reasons: dict[str, str] = {}
    ort_providers = devices.get("onnxruntime")
    ov_devices = devices.get("openvino")
    if key == "cpu":
        targets["torch"] = "cpu"
        if ort_providers is not None:
            targets["onnxruntime"] = "CPUExecutionProvider"
        if ov_devices is not None:
            targets["openvino"] = "CPU"
        return targets, reasons

    reasons["torch"] = "torch rows run on --device cpu only"
    if ort_providers is not None:
        candidates = _ORT_ALIASES.get(key, []) + [p for p in ort_providers if p.lower() == key]
        match = next((p for p in candidates if p in ort_providers), None)
        if match:
            targets["onnxruntime"] = match
        else:
            reasons["onnxruntime"] = f"no ONNX Runtime provider for {wanted}"
    if ov_devices is not None:
        upper = wanted.upper()
        if upper in ov_devices or any(d.split(".")[0] == upper for d in ov_devices) or \
                upper.split(":")[0] in ("AUTO", "MULTI", "HETERO"):
            targets["openvino"] = upper
        else:
            reasons["openvino"] = f"no OpenVINO device {upper}"
    if not targets:
        ort_text = ", ".join(ort_providers) if ort_providers is not None else "not installed"
        ov_text = ", ".join(ov_devices) if ov_devices is not None else "not installed"
        raise EdgeDistillError(f"device {wanted!r} is not available on this machine: OpenVINO devices: {ov_text}; "
                               f"ONNX Runtime providers: {ort_text}; torch: cpu")
    return targets, reasons


def student_source(manifest: dict[str, Any], bundle_dir: Path) -> tuple[Path | None, str | None, str | None]:
    """Where the torch baseline's weights are: ``(student.json, expected sha256, None)``, or
    ``(None, None, why not)``. The bundle's own ``student.json`` + ``.safetensors`` win;
    else the run directory ``provenance.student.run_dir`` names, when it is on this machine."""
    own = bundle_dir / "student.json"
    if own.is_file() and own.with_suffix(".safetensors").is_file():
        return own, None, None
    student = (manifest.get("provenance") or {}).get("student") or {}
    run_dir = student.get("run_dir")
    if not run_dir:
        return None, None, "the bundle holds no student weights and its provenance names no run directory"
    candidate = Path(run_dir) / "student.json"
    if not (candidate.is_file() and candidate.with_suffix(".safetensors").is_file()):
        return None, None, (f"the bundle holds no student weights and its provenance run directory "
                            f"{run_dir} has no student.json + student.safetensors here")
    return candidate, student.get("weights_sha256"), None


# ----------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One measured configuration (one worker process)."""

    backend: str
    variant: str
    precision: str
    threads: int
    device: str
    model: str
    weights: str | None = None
    inference_precision: str | None = None
    size_bytes: int | None = None
    knn_top1: float | None = None
    knn_drop: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        hint = f"@{self.inference_precision}" if self.inference_precision else ""
        return f"{self.backend}:{self.variant}:{self.precision}{hint}:{self.threads}t"

    @property
    def label(self) -> str:
        if self.backend == "torch":
            return f"torch eager {self.precision}"
        return f"{self.backend} {self.variant}"


def _knn(manifest: dict[str, Any], variant: str | None, fallback: bool = False) -> tuple[float | None, float | None]:
    """(top-1, drop) the export gate measured: of torch FP32 (``variant=None``), of a variant
    at its recorded precision hint, or (``fallback``) of a bf16-hint variant run in f32."""
    knn = ((manifest.get("validation") or {}).get("knn") or {})
    figures = knn.get("torch_fp32") if variant is None else (knn.get("variants") or {}).get(variant)
    if fallback and isinstance(figures, dict):
        figures = figures.get("f32_fallback")
    if not isinstance(figures, dict) or figures.get("top1") is None:
        return None, None
    return float(figures["top1"]), (float(figures["drop"]) if figures.get("drop") is not None else
                                    (0.0 if variant is None else None))


def plan_rows(manifest: dict[str, Any], bundle_dir: Path, *, backends: Sequence[str], precisions: Sequence[str],
              threads: Sequence[int], targets: dict[str, str], reasons: dict[str, str],
              native_bf16: bool) -> tuple[list[Row], list[dict[str, Any]]]:
    """The rows to measure, and the ones left out with the reason.

    torch: the student in fp32 (and bf16 autocast where the CPU has it). ONNX Runtime: every
    ONNX variant. OpenVINO: every OpenVINO variant with its manifest's precision hint (a bf16-hint
    variant again in f32, its fallback on CPUs without bf16), fp32 and f32-hint int8 variants
    again with a bf16 hint where the CPU has it, and the ONNX variants it has no own
    counterpart for (ONNX Runtime's QDQ INT8 is a different quantization from NNCF's; the
    FP32 ONNX graph is the one the FP32 IR was converted from). k-NN figures go only to rows
    that run exactly as the export's accuracy gate ran them.
    """
    rows: list[Row] = []
    skipped: list[dict[str, Any]] = []
    variants: dict[str, dict[str, Any]] = manifest["variants"]
    cpu = targets.get("onnxruntime", "CPUExecutionProvider") == "CPUExecutionProvider" and \
        targets.get("openvino", "CPU") == "CPU"

    def skip(backend: str, variant: str, precision: str, reason: str) -> None:
        entry = {"backend": backend, "variant": variant, "precision": precision, "reason": reason}
        if entry not in skipped:
            skipped.append(entry)

    def size(name: str) -> int | None:
        var = variants[name]
        total = var.get("total_size_bytes")
        if total is None:
            from edgedistill.runtime.manifest import variant_files

            total = sum(p.stat().st_size for p, _ in variant_files(manifest, bundle_dir, name) if p.is_file())
        return int(total)

    def add(t: int, **kw: Any) -> None:
        if kw["precision"] in precisions:
            rows.append(Row(threads=t, **kw))

    h, w = manifest["input"]["shape"][2:4]
    for t in threads:
        if "torch" in backends:
            if "torch" in reasons:
                skip("torch", "student", "fp32", reasons["torch"])
            elif importlib.util.find_spec("torch") is None:
                skip("torch", "student", "fp32", "torch is not installed")
            else:
                source, sha, why = student_source(manifest, bundle_dir)
                if source is None:
                    skip("torch", "student", "fp32", why or "no weights")
                else:
                    weights = source.with_suffix(".safetensors")
                    common = dict(backend="torch", variant="student", device="cpu", model=str(source),
                                  size_bytes=weights.stat().st_size,
                                  extra={"weights_sha256": sha, "img_size": [h, w]})
                    top1, drop = _knn(manifest, None)
                    add(t, precision="fp32", knn_top1=top1, knn_drop=drop, **common)
                    if "bf16" in precisions and not native_bf16:
                        skip("torch", "student", "bf16", "this CPU has no native bf16")
                    elif native_bf16:
                        add(t, precision="bf16", inference_precision="bf16", **common)

        for name, var in variants.items():
            fmt, prec = var["format"], var["precision"]
            path = str(bundle_dir / var["file"])
            hint = var.get("inference_precision_hint", "f32")
            if fmt == "onnx" and "onnxruntime" in backends:
                if "onnxruntime" not in targets:
                    skip("onnxruntime", name, prec, reasons.get("onnxruntime", "onnxruntime is not installed"))
                else:
                    top1, drop = _knn(manifest, name)
                    add(t, backend="onnxruntime", variant=name, precision=prec, device=targets["onnxruntime"],
                        model=path, size_bytes=size(name), knn_top1=top1, knn_drop=drop)
            if "openvino" not in backends:
                continue
            if "openvino" not in targets:
                skip("openvino", name, prec, reasons.get("openvino", "openvino is not installed"))
                continue
            device = targets["openvino"]
            if fmt == "openvino":
                from edgedistill.runtime.manifest import variant_files

                weights = str(variant_files(manifest, bundle_dir, name)[1][0])
                # the gate measured each variant at its recorded hint (and bf16 ones in f32 too)
                top1, drop = _knn(manifest, name)
                add(t, backend="openvino", variant=name, precision=prec, device=device, model=path, weights=weights,
                    inference_precision=hint, size_bytes=size(name), knn_top1=top1, knn_drop=drop)
                if hint == "bf16":  # what a device without native bf16 runs
                    top1, drop = _knn(manifest, name, fallback=True)
                    add(t, backend="openvino", variant=name, precision=prec, device=device, model=path,
                        weights=weights, inference_precision="f32", size_bytes=size(name), knn_top1=top1,
                        knn_drop=drop)
                if prec == "fp32" and "bf16" in precisions:
                    if cpu and native_bf16:
                        add(t, backend="openvino", variant=name, precision="bf16", device=device, model=path,
                            weights=weights, inference_precision="bf16", size_bytes=size(name))
                    else:
                        skip("openvino", name, "bf16", "this CPU has no native bf16" if cpu else
                             "bf16 rows run on CPU only")
                if prec == "int8" and hint != "bf16" and cpu and native_bf16:
                    # the layers NNCF left in floating point (norms, softmax, GELU, residual adds)
                    # in bf16: faster here, but not what the accuracy gate validated (no k-NN)
                    add(t, backend="openvino", variant=name, precision="int8", device=device, model=path,
                        weights=weights, inference_precision="bf16", size_bytes=size(name))
            elif fmt == "onnx":
                twin = any(v["format"] == "openvino" and v["precision"] == prec for v in variants.values())
                if prec == "int8" or not twin:
                    add(t, backend="openvino", variant=name, precision=prec, device=device, model=path,
                        inference_precision="f32", size_bytes=size(name))
    return rows, skipped


# ----------------------------------------------------------------------------- statistics


def summarize_times(rounds: list[list[float]], batch: int) -> dict[str, Any]:
    """Latency percentiles (ms) over every timed run, throughput (images/s, from the median)
    and the median of each round (how much the machine drifted during the run)."""
    flat = np.asarray([t for r in rounds for t in r], dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(flat, [50, 90, 99]))
    round_p50 = [round(float(np.median(r)), 4) for r in rounds if r]
    spread = (max(round_p50) - min(round_p50)) / p50 if round_p50 and p50 > 0 else None
    return {
        "batch": batch,
        "runs": int(flat.size),
        "p50_ms": round(p50, 4), "p90_ms": round(p90, 4), "p99_ms": round(p99, 4),
        "mean_ms": round(float(flat.mean()), 4), "std_ms": round(float(flat.std()), 4),
        "min_ms": round(float(flat.min()), 4), "max_ms": round(float(flat.max()), 4),
        "throughput_ips": round(batch * 1000.0 / p50, 2) if p50 > 0 else None,
        "round_p50_ms": round_p50,
        "round_spread": round(spread, 4) if spread is not None else None,
    }


# ----------------------------------------------------------------------------- workers


class _WorkerDied(Exception):
    pass


class _Worker:
    """A worker process and a thread that reads its JSON replies into a queue."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str]) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgedistill.bench.worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
                                     text=True, bufsize=1)
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.replies.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.replies.put(None)

    def stderr_tail(self, lines: int = 3) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise _WorkerDied(f"no reply within {timeout:.0f} s") from None
        if reply is None:
            self.proc.wait(timeout=10)
            raise _WorkerDied(f"the worker exited ({self.proc.returncode}): {self.stderr_tail() or 'no output'}")
        return reply

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerDied(f"the worker exited: {self.stderr_tail() or 'no output'}") from None

    def close(self, timeout: float = 30) -> dict[str, Any] | None:
        reply = None
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                reply = self.receive(timeout)
                self.proc.wait(timeout=timeout)
            except (_WorkerDied, subprocess.TimeoutExpired):
                self.kill()
        self.stderr.close()
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _worker_env(threads: int) -> dict[str, str]:
    """The caller's environment (PYTHONPATH and all: a worker sees what the caller sees),
    with OpenMP/MKL pools sized like the row, and this package importable."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, root])
    return env


# ----------------------------------------------------------------------------- the stage


def _progress(console: Any, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not enabled, transient=False)


def run_bench(
    bundle: str | Path,
    *,
    device: str = "cpu",
    backends: str | Sequence[str] | None = None,
    precisions: str | Sequence[str] | None = None,
    threads: str | Sequence[int] | None = None,
    batches: str | Sequence[int] = (1, 8, 32),
    warmup: int = 5,
    runs: int | None = None,
    seconds: float | None = None,
    rounds: int = 5,
    static_shapes: bool = True,
    progress: bool = True,
    console: Any = None,
    load_timeout: float = 900.0,
    run_timeout: float = 600.0,
) -> dict[str, Any]:
    """Benchmark every variant of ``bundle`` (a directory with ``manifest.json``).

    Args:
        device: "cpu", an OpenVINO device ("GPU", "NPU", "GPU.1") or an ONNX Runtime execution
            provider ("cuda", "CUDAExecutionProvider", "tensorrt", "coreml", ...).
        backends: subset of torch, onnxruntime, openvino (default: all that are installed).
        precisions: subset of fp32, bf16, fp16, int8 (default: all the bundle and CPU allow).
        threads: thread counts, each measured separately (default: the usable CPUs).
        batches: batch sizes; the smallest gives the latency percentiles, the others throughput.
        warmup: untimed runs per batch size after loading.
        runs / seconds: timed runs per row and batch size, or seconds per row and batch size
            (default: 2 s), split over ``rounds`` interleaved rounds.
        static_shapes: OpenVINO compiles a static-shape model per batch size.

    Returns:
        The report (see ``edgedistill.bench.report``): machine, settings, baselines, rows with
        latency/throughput per batch, speed-ups, cold start, memory, size, k-NN figures.
        Raises EdgeDistillError for a bad bundle, option or device.
    """
    from rich.console import Console

    from edgedistill.bench.machine import available_devices, describe_machine, load_average, usable_cpus
    from edgedistill.runtime.manifest import read_manifest
    from edgedistill.utils import cpu_has_native_bf16

    con = console if console is not None else Console(stderr=True, quiet=not progress)
    bundle_dir = Path(bundle).expanduser()
    manifest = read_manifest(bundle_dir)
    backend_list = parse_list(backends, "backends", choices=BACKENDS) or list(BACKENDS)
    precision_list = parse_list(precisions, "precision", choices=PRECISIONS) or list(PRECISIONS)
    thread_list = parse_list(threads, "threads", kind=int) or [usable_cpus()]
    batch_list = sorted(parse_list(batches, "batch", kind=int) or [1])
    if runs is not None and seconds is not None:
        raise EdgeDistillError("give --runs or --seconds, not both")
    if runs is not None and int(runs) < 1:
        raise EdgeDistillError(f"--runs must be >= 1, got {runs}")
    if seconds is not None and not float(seconds) > 0:
        raise EdgeDistillError(f"--seconds must be > 0, got {seconds}")
    if int(warmup) < 0 or int(rounds) < 1:
        raise EdgeDistillError("--warmup must be >= 0 and --rounds >= 1")
    if runs is None and seconds is None:
        seconds = 2.0
    rounds = int(min(rounds, runs)) if runs is not None else int(rounds)
    input_shape = manifest["input"]["shape"]
    if manifest["input"].get("layout", "NCHW") != "NCHW" or not all(
            isinstance(v, int) and v > 0 for v in input_shape[1:]):
        raise EdgeDistillError(f"bench needs a static NCHW image input, the bundle has {input_shape}")

    devices = available_devices()
    targets, reasons = resolve_device(device, devices)
    for backend, library in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        if devices.get(library) is None:
            error = str(devices.get(library + "_error") or "")
            reasons.setdefault(backend, f"{library} is not installed (pip install {library})"
                               if error.startswith("ModuleNotFoundError") else f"{library} cannot be loaded: {error}")
    native_bf16 = cpu_has_native_bf16()
    rows, skipped = plan_rows(manifest, bundle_dir, backends=backend_list, precisions=precision_list,
                              threads=thread_list, targets=targets, reasons=reasons, native_bf16=native_bf16)
    if not rows:
        why = "; ".join(sorted({s["reason"] for s in skipped})) or "nothing matches the options"
        raise EdgeDistillError(f"nothing to benchmark in {bundle_dir} with these options ({why})")

    machine = describe_machine(devices)
    sample = manifest.get("sample") or {}
    sample_path = str(bundle_dir / sample["file"]) if sample.get("file") else None
    per_round: dict[str, Any] = ({"runs": int(math.ceil(int(runs) / rounds))} if runs is not None else
                                 {"seconds": float(seconds) / rounds, "min_runs": 1})
    round_loads: dict[str, list[float | None]] = {}
    settings = {
        "device": device, "backends": backend_list, "precisions": precision_list, "threads": thread_list,
        "batches": batch_list, "latency_batch": batch_list[0], "warmup": int(warmup), "runs": runs,
        "seconds": seconds, "rounds": rounds, "per_round": per_round, "rewarm_per_round": 1,
        "settle_seconds": SETTLE_SECONDS, "load_average_per_round": round_loads,
        "static_shapes": bool(static_shapes),
        "method": "one fresh process per row, loaded one after another; timed runs interleaved in rounds "
                  "with the row order rotated each round; percentiles over all timed runs",
        "input": "the bundle's sample image through its preprocessing, repeated to the batch size"
                 if sample_path else "seeded noise",
    }
    con.print(f"benchmarking [bold]{manifest['name']}[/] ({bundle_dir}): {len(rows)} rows x "
              f"batch {','.join(map(str, batch_list))} on {device}, threads {','.join(map(str, thread_list))}")

    results: dict[str, dict[str, Any]] = {}
    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = load_average()
    with _progress(con, progress) as bar:
        for t in thread_list:
            group = [r for r in rows if r.threads == t]
            _measure_group(group, results, skipped, manifest=manifest, batches=batch_list, warmup=int(warmup),
                           per_round=per_round, rounds=rounds, static_shapes=static_shapes, sample=sample_path,
                           bar=bar, load_timeout=load_timeout, run_timeout=run_timeout,
                           round_loads=round_loads.setdefault(str(t), []))

    measured = [r for r in rows if r.id in results]
    if not measured:
        why = "; ".join(f"{s['backend']} {s['variant']}: {s['reason']}" for s in skipped[:3])
        raise EdgeDistillError(f"no row could be measured ({why})")
    report_rows = [dict(_row_fields(r), **results[r.id]) for r in measured]
    baselines = _baselines(report_rows, thread_list, skipped)
    _ratios(report_rows, baselines)
    notes = []
    load_after = load_average()
    loads = [v for v in [(load_before or [0])[0], (load_after or [0])[0]] + sum(round_loads.values(), []) if v]
    busy = max(loads, default=0.0)
    if busy > usable_cpus():
        notes.append(f"the machine was busy (1-min load average up to {busy:.1f} on {usable_cpus()} usable CPUs): "
                     "absolute figures are inflated, torch's OpenMP threads more than the others; "
                     "compare the ratios of this run only, and rerun on a quiet machine before acting on them")
    drifting = sorted({r["id"] for r in report_rows for s in r["batches"].values()
                       if s.get("round_spread") is not None and s["round_spread"] > 0.5})
    if drifting:
        notes.append(f"round medians drifted by more than 50% for {', '.join(drifting)} (see round_p50_ms): "
                     "the machine's speed changed during the run")
    return {
        "format": REPORT_FORMAT,
        "created": started.isoformat(timespec="seconds"),
        "seconds": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1),
        "bundle": {"path": str(bundle_dir.resolve()), "name": manifest["name"], "input": manifest["input"],
                   "default_variant": manifest.get("default_variant"),
                   "knn": _knn_meta(manifest)},
        "machine": dict(machine, load_average_after=load_after),
        "settings": settings,
        "baselines": baselines,
        "rows": report_rows,
        "skipped": skipped,
        "best": _best(report_rows, batch_list[0]),
        "notes": notes,
    }


def _knn_meta(manifest: dict[str, Any]) -> dict[str, Any] | None:
    knn = (manifest.get("validation") or {}).get("knn") or {}
    if not knn or knn.get("skipped") or not knn.get("torch_fp32"):
        return None
    meta = {k: knn.get(k) for k in ("source", "train_images", "val_images", "classes", "k", "max_drop")}
    meta["torch_fp32_top1"] = knn["torch_fp32"].get("top1")
    return meta


def _row_fields(row: Row) -> dict[str, Any]:
    return {"id": row.id, "label": row.label, "backend": row.backend, "variant": row.variant,
            "precision": row.precision, "inference_precision": row.inference_precision, "threads": row.threads,
            "device": row.device, "file": os.path.basename(row.model), "size_bytes": row.size_bytes,
            "knn_top1": row.knn_top1, "knn_drop": row.knn_drop}


def _measure_group(group: list[Row], results: dict[str, dict[str, Any]], skipped: list[dict[str, Any]], *,
                   manifest: dict[str, Any], batches: list[int], warmup: int, per_round: dict[str, Any],
                   rounds: int, static_shapes: bool, sample: str | None, bar: Any, load_timeout: float,
                   run_timeout: float, round_loads: list[float | None]) -> None:
    """Load every row of one thread count (one at a time), then interleave their timed runs.
    ``round_loads`` receives the 1-minute load average at the start of every round."""
    from edgedistill.bench.machine import load_average

    threads = group[0].threads if group else 1
    env = _worker_env(threads)
    workers: dict[str, _Worker] = {}
    info: dict[str, dict[str, Any]] = {}
    times: dict[str, dict[int, list[list[float]]]] = {}
    load_task = bar.add_task(f"loading ({threads} threads)", total=len(group))
    try:
        for row in group:
            bar.update(load_task, description=f"loading {row.label} {row.precision} ({threads} threads)")
            spec = {"backend": row.backend, "model": row.model, "weights": row.weights, "precision": row.precision,
                    "inference_precision": row.inference_precision, "threads": row.threads, "device": row.device,
                    "batches": batches, "input": {"name": manifest["input"]["name"],
                                                  "shape": manifest["input"]["shape"][1:]},
                    "sample": sample, "preprocessing": manifest["preprocessing"], "static_shapes": static_shapes,
                    "warmup": warmup, "min_runs": 1, "mode": "rounds", **row.extra}
            worker = _Worker(spec, env)
            try:
                reply = worker.receive(load_timeout)
            except _WorkerDied as exc:
                reply = {"event": "error", "error": str(exc), "unavailable": False}
            if reply.get("event") != "ready":
                worker.close()
                skipped.append({"backend": row.backend, "variant": row.variant, "precision": row.precision,
                                "threads": threads, "reason": reply.get("error", "no reply"),
                                "unavailable": bool(reply.get("unavailable"))})
            else:
                workers[row.id] = worker
                info[row.id] = reply
                times[row.id] = {b: [] for b in batches}
            bar.advance(load_task)
        bar.update(load_task, description=f"loaded ({threads} threads)")

        live = [r.id for r in group if r.id in workers]
        task = bar.add_task(f"measuring ({threads} threads)", total=rounds * len(batches) * len(live))
        for r in range(rounds):
            round_loads.append((load_average() or [None])[0])
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for batch in batches:
                for row_id in list(order):
                    if row_id not in workers:
                        continue
                    bar.update(task, description=f"round {r + 1}/{rounds}, batch {batch}: {row_id}")
                    worker = workers[row_id]
                    # let the previous row's spinning worker threads (OpenMP, TBB, ORT) go idle first
                    time.sleep(SETTLE_SECONDS)
                    try:
                        worker.send({"cmd": "run", "batch": batch, "rewarm": 1, **per_round})
                        reply = worker.receive(run_timeout)
                    except _WorkerDied as exc:
                        reply = {"event": "error", "error": str(exc)}
                    if reply.get("event") != "times":
                        row = next(x for x in group if x.id == row_id)
                        skipped.append({"backend": row.backend, "variant": row.variant, "precision": row.precision,
                                        "threads": threads, "reason": f"failed while measuring: {reply.get('error')}",
                                        "unavailable": False})
                        workers.pop(row_id).kill()
                        continue
                    times[row_id][batch].append(reply["ms"])
                    bar.advance(task)
        bar.update(task, description=f"measured ({threads} threads)")
    finally:
        closing = {row_id: w.close() for row_id, w in workers.items()}
        for w in workers.values():
            w.kill()
    for row_id in workers:
        ready, final = info[row_id], closing.get(row_id) or {}
        results[row_id] = {
            "import_seconds": _r(ready.get("import_seconds")),
            "load_seconds": _r(ready.get("load_seconds")),
            "load_seconds_per_batch": ready.get("load_seconds_per_batch"),
            "first_run_ms": _r(ready.get("first_run_ms")),
            "cold_start_seconds": _r((ready.get("import_seconds") or 0) + (ready.get("load_seconds") or 0)
                                     + (ready.get("first_run_ms") or 0) / 1000),
            "rss_after_import_mb": ready.get("rss_after_import_mb"),
            "peak_rss_mb": ready.get("peak_rss_mb"),
            "peak_rss_all_mb": final.get("peak_rss_all_mb", ready.get("peak_rss_all_mb")),
            "output_shape": ready.get("output_shape"),
            "settings": ready.get("settings"),
            "batches": {str(b): summarize_times(times[row_id][b], b) for b in batches if times[row_id][b]},
        }


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _baselines(rows: list[dict[str, Any]], threads: list[int], skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per thread count: torch eager FP32, else ONNX Runtime FP32, else the first FP32 row."""
    out = []
    for t in threads:
        mine = [r for r in rows if r["threads"] == t]
        if not mine:
            continue
        torch_row = next((r for r in mine if r["backend"] == "torch" and r["precision"] == "fp32"), None)
        if torch_row is not None:
            out.append({"threads": t, "row": torch_row["id"], "label": "torch eager fp32", "fallback_reason": None})
            continue
        why = next((s["reason"] for s in skipped if s["backend"] == "torch" and s["precision"] == "fp32"
                    and s.get("threads", t) == t), "torch was not asked for (--backends)")
        chosen = (next((r for r in mine if r["backend"] == "onnxruntime" and r["precision"] == "fp32"), None)
                  or next((r for r in mine if r["precision"] == "fp32"), None) or mine[0])
        label = chosen["label"] + ("" if chosen["precision"] in chosen["variant"] else f" {chosen['precision']}")
        out.append({"threads": t, "row": chosen["id"], "label": label,
                    "fallback_reason": f"torch eager fp32 unavailable: {why}"})
    return out


def _ratios(rows: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> None:
    """speedup = baseline p50 / row p50 and latency_ratio = its inverse, per batch size, against
    the baseline with the same threads; latency_ratio_by_round: the same ratio within each round
    (median, min, max over rounds), a spread to judge the ratio by."""
    by_id = {r["id"]: r for r in rows}
    for row in rows:
        base = next((b for b in baselines if b["threads"] == row["threads"]), None)
        row["baseline"] = bool(base and base["row"] == row["id"])
        ref = by_id.get(base["row"]) if base else None
        for batch, stats in row["batches"].items():
            ref_stats = (ref or {}).get("batches", {}).get(batch)
            if ref_stats and stats["p50_ms"] > 0:
                stats["speedup"] = round(ref_stats["p50_ms"] / stats["p50_ms"], 4)
                stats["latency_ratio"] = round(stats["p50_ms"] / ref_stats["p50_ms"], 4)
                # paired by round (both measured minutes apart at most): drift between rounds cancels
                paired = [a / b for a, b in zip(stats["round_p50_ms"], ref_stats["round_p50_ms"]) if b > 0]
                stats["latency_ratio_by_round"] = ({"median": round(float(np.median(paired)), 4),
                                                    "min": round(min(paired), 4), "max": round(max(paired), 4)}
                                                   if paired else None)
            else:
                stats["speedup"] = stats["latency_ratio"] = stats["latency_ratio_by_round"] = None


def _best(rows: list[dict[str, Any]], latency_batch: int) -> dict[str, Any]:
    """Per precision and thread count, the row with the lowest p50 at the latency batch."""
    best: dict[str, Any] = {}
    for row in rows:
        stats = row["batches"].get(str(latency_batch))
        if not stats:
            continue
        key = f"{row['precision']}@{row['threads']}t"
        if key not in best or stats["p50_ms"] < best[key]["p50_ms"]:
            best[key] = {"row": row["id"], "p50_ms": stats["p50_ms"], "latency_ratio": stats.get("latency_ratio"),
                         "speedup": stats.get("speedup"), "knn_top1": row["knn_top1"], "knn_drop": row["knn_drop"]}
    return best
