"""What a benchmark measures: ``--device`` mapped onto each backend, the torch baseline's
weights, and the rows (backend x variant x precision x threads) with the reasons for those
left out. ``--device browser`` adds onnxruntime-web rows (``bench.browser``) to the native CPU
rows they are compared with."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgedistill.errors import EdgeDistillError

__all__ = ["BACKENDS", "PRECISIONS", "Row", "device_targets", "student_source", "plan_rows"]

BACKENDS = ("torch", "onnxruntime", "openvino", "executorch", "onnxruntime-web")
BROWSER = "browser"  # the --device that adds the onnxruntime-web rows
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
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



def device_targets(device: str, devices: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
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
    if key in ("cpu", BROWSER):  # the browser's rows come with the native ones they are compared with
        targets["torch"] = "cpu"
        if ort_providers is not None:
            targets["onnxruntime"] = "CPUExecutionProvider"
        if ov_devices is not None:
            targets["openvino"] = "CPU"
        if devices.get("executorch") is not None:
            targets["executorch"] = "XNNPACK"
        if key == BROWSER:
            targets["onnxruntime-web"] = BROWSER
        else:
            reasons["onnxruntime-web"] = "onnxruntime-web rows run with --device browser"
        return targets, reasons

    reasons["torch"] = "torch rows run on --device cpu only"
    reasons["executorch"] = "ExecuTorch rows run on --device cpu (XNNPACK) only"
    reasons["onnxruntime-web"] = "onnxruntime-web rows run with --device browser"
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
    def engine(self) -> str:
        """The backend, with the browser's engine (wasm, webgpu) for onnxruntime-web rows."""
        return f"{self.backend} {self.device}" if self.backend == "onnxruntime-web" else self.backend

    @property
    def id(self) -> str:
        hint = f"@{self.inference_precision}" if self.inference_precision else ""
        return f"{self.engine.replace(' ', '/')}:{self.variant}:{self.precision}{hint}:{self.threads}t"

    @property
    def label(self) -> str:
        if self.backend == "torch":
            return f"torch eager {self.precision}"
        return f"{self.engine} {self.variant}"


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


@dataclass
class BenchOptions:
    """The measuring options, checked."""

    backends: list[str]
    precisions: list[str]
    threads: list[int]
    batches: list[int]  # sorted: the first gives the latency percentiles
    warmup: int
    runs: int | None
    seconds: float | None
    rounds: int
    static_shapes: bool

    @property
    def per_round(self) -> dict[str, Any]:
        """What each interleaved round asks of a row: a share of the runs or of the seconds."""
        if self.runs is not None:
            return {"runs": -(-self.runs // self.rounds)}
        return {"seconds": float(self.seconds) / self.rounds, "min_runs": 1}

    @classmethod
    def parse(cls, backends: Any, precisions: Any, threads: Any, batches: Any, warmup: int, runs: int | None,
              seconds: float | None, rounds: int, static_shapes: bool, device: str = "cpu") -> "BenchOptions":
        """The options, checked; the default threads are the usable CPUs (and 1 as well for
        ``--device browser``: a page gets several only when it is cross-origin isolated)."""
        from edgedistill.bench.machine import usable_cpus
        from edgedistill.options import parse_list
        from edgedistill.limits import check_count

        if runs is not None and seconds is not None:
            raise EdgeDistillError("give --runs or --seconds, not both")
        if runs is not None and int(runs) < 1:
            raise EdgeDistillError(f"--runs must be >= 1, got {runs}")
        if seconds is not None and not 0 < float(seconds) < float("inf"):
            raise EdgeDistillError(f"--seconds must be a number > 0, got {seconds}")
        if int(warmup) < 0 or int(rounds) < 1:
            raise EdgeDistillError("--warmup must be >= 0 and --rounds >= 1")
        if runs is None and seconds is None:
            seconds = 2.0
        default_threads = sorted({1, usable_cpus()}) if device.strip().lower() == BROWSER else [usable_cpus()]
        return cls(backends=parse_list(backends, "backends", choices=BACKENDS) or list(BACKENDS),
                   precisions=parse_list(precisions, "precision", choices=PRECISIONS) or list(PRECISIONS),
                   threads=[check_count(t, "--threads") for t in parse_list(threads, "threads", kind=int) or
                            default_threads],
                   batches=sorted(parse_list(batches, "batch", kind=int) or [1]), warmup=int(warmup),
                   runs=None if runs is None else int(runs), seconds=seconds,
                   rounds=int(min(rounds, runs)) if runs is not None else int(rounds),
                   static_shapes=bool(static_shapes))


def plan_bench(manifest: dict[str, Any], bundle_dir: Path, opts: BenchOptions, device: str,
               devices: dict[str, Any]) -> tuple[list["Row"], list[dict[str, Any]]]:
    """The rows to measure for ``device`` and the ones left out with the reason; an error when
    nothing can be measured."""
    from edgedistill.utils import cpu_has_native_bf16

    shape = manifest["input"]["shape"]
    if manifest["input"].get("layout", "NCHW") != "NCHW" or not all(isinstance(v, int) and v > 0 for v in shape[1:]):
        raise EdgeDistillError(f"bench needs a static NCHW image input, the bundle has {shape}")
    if device.strip().lower() == BROWSER and "onnxruntime-web" in opts.backends:
        from edgedistill.bench.browser import require_browser

        require_browser()
    targets, reasons = device_targets(device, devices)
    for library in ("onnxruntime", "openvino", "executorch"):
        if devices.get(library) is None:
            error = str(devices.get(library + "_error") or "")
            reasons.setdefault(library, f"{library} is not installed (pip install {library})"
                               if error.startswith("ModuleNotFoundError") or not error
                               else f"{library} cannot be loaded: {error}")
    rows, skipped = plan_rows(manifest, bundle_dir, backends=opts.backends, precisions=opts.precisions,
                              threads=opts.threads, targets=targets, reasons=reasons, native_bf16=cpu_has_native_bf16())
    if not rows:
        why = "; ".join(sorted({s["reason"] for s in skipped})) or "nothing matches the options"
        raise EdgeDistillError(f"nothing to benchmark in {bundle_dir} with these options ({why})")
    _check_memory(shape, opts, rows)
    return rows, skipped


def _check_memory(shape: list[Any], opts: BenchOptions, rows: list["Row"]) -> None:
    """The rows of one thread count stay loaded together, each holding every batch size it
    measures: refuse batch sizes whose inputs and activations cannot fit in memory."""
    from edgedistill.limits import check_batch_memory, image_memory

    loaded = max(sum(1 for r in rows if r.threads == t) for t in opts.threads)
    check_batch_memory(max(opts.batches), image_memory(shape[2], shape[3]), "--batch", copies=loaded)


class _Planner:
    """Collects rows and skips for one bundle (``plan_rows``)."""

    def __init__(self, manifest: dict[str, Any], bundle_dir: Path, precisions: Sequence[str],
                 targets: dict[str, str], reasons: dict[str, str], native_bf16: bool) -> None:
        self.manifest, self.bundle_dir, self.precisions = manifest, bundle_dir, precisions
        self.targets, self.reasons, self.native_bf16 = targets, reasons, native_bf16
        self.variants: dict[str, dict[str, Any]] = manifest["variants"]
        self.cpu = targets.get("onnxruntime", "CPUExecutionProvider") == "CPUExecutionProvider" and \
            targets.get("openvino", "CPU") == "CPU"
        self.rows: list[Row] = []
        self.skipped: list[dict[str, Any]] = []

    def skip(self, backend: str, variant: str, precision: str, reason: str) -> None:
        entry = {"backend": backend, "variant": variant, "precision": precision, "reason": reason}
        if entry not in self.skipped:
            self.skipped.append(entry)

    def size(self, name: str) -> int:
        total = self.variants[name].get("total_size_bytes")
        if total is None:
            from edgedistill.runtime.manifest import variant_files

            total = sum(p.stat().st_size for p, _ in variant_files(self.manifest, self.bundle_dir, name)
                        if p.is_file())
        return int(total)

    def add(self, t: int, **kw: Any) -> None:
        if kw["precision"] in self.precisions:
            self.rows.append(Row(threads=t, **kw))

    def torch(self, t: int) -> None:
        """The student in fp32 (and bf16 autocast where the CPU has it)."""
        if "torch" in self.reasons:
            return self.skip("torch", "student", "fp32", self.reasons["torch"])
        if importlib.util.find_spec("torch") is None:
            return self.skip("torch", "student", "fp32", "torch is not installed")
        source, sha, why = student_source(self.manifest, self.bundle_dir)
        if source is None:
            return self.skip("torch", "student", "fp32", why or "no weights")
        h, w = self.manifest["input"]["shape"][2:4]
        common = dict(backend="torch", variant="student", device="cpu", model=str(source),
                      size_bytes=source.with_suffix(".safetensors").stat().st_size,
                      extra={"weights_sha256": sha, "img_size": [h, w]})
        top1, drop = _knn(self.manifest, None)
        self.add(t, precision="fp32", knn_top1=top1, knn_drop=drop, **common)
        if "bf16" in self.precisions and not self.native_bf16:
            self.skip("torch", "student", "bf16", "this CPU has no native bf16")
        elif self.native_bf16:
            self.add(t, precision="bf16", inference_precision="bf16", **common)

    def onnxruntime(self, t: int, name: str, var: dict[str, Any]) -> None:
        if "onnxruntime" not in self.targets:
            return self.skip("onnxruntime", name, var["precision"],
                             self.reasons.get("onnxruntime", "onnxruntime is not installed"))
        top1, drop = _knn(self.manifest, name)
        self.add(t, backend="onnxruntime", variant=name, precision=var["precision"],
                 device=self.targets["onnxruntime"], model=str(self.bundle_dir / var["file"]),
                 size_bytes=self.size(name), knn_top1=top1, knn_drop=drop)

    def openvino(self, t: int, name: str, var: dict[str, Any]) -> None:
        """An OpenVINO variant at its recorded hint (a bf16 one again in f32, its fallback on
        CPUs without bf16); fp32 and f32-hint int8 again in bf16 where the CPU has it."""
        from edgedistill.runtime.manifest import variant_files

        prec, hint, device = var["precision"], var.get("inference_precision_hint", "f32"), self.targets["openvino"]
        common = dict(backend="openvino", variant=name, device=device, model=str(self.bundle_dir / var["file"]),
                      weights=str(variant_files(self.manifest, self.bundle_dir, name)[1][0]),
                      size_bytes=self.size(name))
        top1, drop = _knn(self.manifest, name)  # the gate measured each variant at its recorded hint
        self.add(t, precision=prec, inference_precision=hint, knn_top1=top1, knn_drop=drop, **common)
        if hint == "bf16":  # what a device without native bf16 runs
            top1, drop = _knn(self.manifest, name, fallback=True)
            self.add(t, precision=prec, inference_precision="f32", knn_top1=top1, knn_drop=drop, **common)
        if prec == "fp32" and "bf16" in self.precisions:
            if self.cpu and self.native_bf16:
                self.add(t, precision="bf16", inference_precision="bf16", **common)
            else:
                self.skip("openvino", name, "bf16", "this CPU has no native bf16" if self.cpu else
                          "bf16 rows run on CPU only")
        if prec == "int8" and hint != "bf16" and self.cpu and self.native_bf16:
            # the layers NNCF left in floating point (norms, softmax, GELU, residual adds)
            # in bf16: faster here, but not what the accuracy gate validated (no k-NN)
            self.add(t, precision="int8", inference_precision="bf16", **common)

    def executorch(self, t: int, name: str, var: dict[str, Any]) -> None:
        """An ExecuTorch program through ExecuTorch's Python runtime (XNNPACK's kernels)."""
        if "executorch" not in self.targets:
            return self.skip("executorch", name, var["precision"],
                             self.reasons.get("executorch", "executorch is not installed"))
        top1, drop = _knn(self.manifest, name)
        self.add(t, backend="executorch", variant=name, precision=var["precision"], device="XNNPACK",
                 model=str(self.bundle_dir / var["file"]), size_bytes=self.size(name), knn_top1=top1, knn_drop=drop)

    def browser(self, t: int, first_threads: bool, name: str, var: dict[str, Any]) -> None:
        """An ONNX variant in onnxruntime-web: WASM (SIMD) at ``t`` threads; WebGPU once, in the
        first thread count's group (the page reports it unavailable where there is no adapter)."""
        if "onnxruntime-web" not in self.targets:
            return self.skip("onnxruntime-web", name, var["precision"], self.reasons["onnxruntime-web"])
        if "onnxruntime-web" not in var.get("runtimes", ["onnxruntime-web"]):
            return self.skip("onnxruntime-web", name, var["precision"],
                             "its manifest entry does not list onnxruntime-web (ONNX Runtime contrib operators)")
        top1, drop = _knn(self.manifest, name)  # the export gated these kernels' native twins
        for engine in ("wasm", "webgpu") if first_threads else ("wasm",):
            self.add(t, backend="onnxruntime-web", variant=name, precision=var["precision"],
                     device=engine, model=str(self.bundle_dir / var["file"]), size_bytes=self.size(name),
                     knn_top1=top1, knn_drop=drop, extra={"engine": engine, "model_url": var["file"]})

    def onnx_on_openvino(self, t: int, name: str, var: dict[str, Any]) -> None:
        """ONNX variants OpenVINO has no counterpart of (ORT's INT8 differs from NNCF's;
        the FP32 graph is the one the FP32 IR came from)."""
        prec = var["precision"]
        twin = any(v["format"] == "openvino" and v["precision"] == prec for v in self.variants.values())
        if "openvino" not in var.get("runtimes", ["openvino"]):
            return  # contrib operators only ONNX Runtime has
        if prec == "int8" or not twin:
            self.add(t, backend="openvino", variant=name, precision=prec, device=self.targets["openvino"],
                     model=str(self.bundle_dir / var["file"]), inference_precision="f32", size_bytes=self.size(name))


def plan_rows(manifest: dict[str, Any], bundle_dir: Path, *, backends: Sequence[str], precisions: Sequence[str],
              threads: Sequence[int], targets: dict[str, str], reasons: dict[str, str],
              native_bf16: bool) -> tuple[list[Row], list[dict[str, Any]]]:
    """The rows to measure, and the ones left out with the reason.

    torch: the student in fp32 (and bf16 autocast where the CPU has it). ONNX Runtime: every
    ONNX variant. OpenVINO: every OpenVINO variant with its manifest's precision hint (a bf16-hint
    variant again in f32), fp32 and f32-hint int8 variants again with a bf16 hint where the CPU
    has it, and the ONNX variants it has no own counterpart for. k-NN figures go only to rows
    that run exactly as the export's accuracy gate ran them.
    """
    planner = _Planner(manifest, bundle_dir, precisions, targets, reasons, native_bf16)
    for t in threads:
        if "torch" in backends:
            planner.torch(t)
        for name, var in planner.variants.items():
            if var["format"] == "onnx" and "onnxruntime" in backends:
                planner.onnxruntime(t, name, var)
            if var["format"] == "onnx" and "onnxruntime-web" in backends and "onnxruntime-web" in targets:
                planner.browser(t, t == threads[0], name, var)
            if var["format"] == "executorch" and "executorch" in backends:
                planner.executorch(t, name, var)
            if "openvino" not in backends or var["format"] == "executorch":
                continue
            if "openvino" not in targets:
                planner.skip("openvino", name, var["precision"], reasons.get("openvino", "openvino is not installed"))
            elif var["format"] == "openvino":
                planner.openvino(t, name, var)
            elif var["format"] == "onnx":
                planner.onnx_on_openvino(t, name, var)
    return planner.rows, planner.skipped
