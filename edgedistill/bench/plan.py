"""What a benchmark measures: ``--device`` mapped onto each backend, the torch baseline's
weights, and the rows (backend x variant x precision x threads) with the reasons for those
left out. Every backend but torch is a runtime of the registry (``runtime.registry``), which
decides its own rows; a runtime with a ``--device`` of its own adds its rows
to the native CPU rows they are compared with."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from edgedistill.bench.records import RunSlice, Skip
from edgedistill.errors import EdgeDistillError
from edgedistill.runtime import registry
from edgedistill.runtime.rows import Row
from edgedistill.runtime.manifest import Manifest, VariantEntry, missing_file

__all__ = ["BACKENDS", "PRECISIONS", "Row", "BenchOptions", "device_targets", "student_source", "plan_rows",
           "plan_bench"]

BACKENDS = ("torch", *registry.backends())
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def _cpu_like(device: str) -> bool:
    """``cpu``, or a device of a runtime's own that brings the native CPU rows along."""
    return device.lower() in ("cpu", *registry.devices())


def device_targets(device: str, devices: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Map ``--device`` to what each backend calls it.

    Returns ``(targets, reasons)``: ``targets[backend]`` is the torch device or what the
    runtime calls the device (``Runtime.target``);
    ``reasons[backend]`` says why a backend cannot serve it. A non-CPU device no backend has
    is an EdgeDistillError listing what each runtime sees.
    """
    wanted = device.strip()
    cpu_like = _cpu_like(wanted)
    targets: dict[str, str] = {"torch": "cpu"} if cpu_like else {}
    reasons: dict[str, str] = {} if cpu_like else {"torch": "torch rows run on --device cpu only"}
    for runtime in registry.RUNTIMES:
        found = devices.get(runtime.name)
        asked = "cpu" if cpu_like and runtime.device != wanted.lower() else wanted
        target, why = runtime.target(asked, list(found or []))
        if target is not None and (found is not None or runtime.device):
            targets[runtime.name] = target
        elif why is not None:
            reasons[runtime.name] = why
    if not targets:
        seen = "; ".join(f"{r.label} {r.device_noun}: {', '.join(devices[r.name]) if devices.get(r.name) is not None else 'not installed'}"
                         for r in registry.RUNTIMES if r.accelerators)
        raise EdgeDistillError(f"device {wanted!r} is not available on this machine: {seen}; torch: cpu")
    return targets, reasons


def student_source(manifest: Manifest, bundle_dir: Path) -> tuple[Path | None, str | None, str | None]:
    """Where the torch baseline's weights are: ``(student.json, expected sha256, None)``, or
    ``(None, None, why not)``. The bundle's own ``student.json`` + ``.safetensors`` win;
    else the run directory ``provenance.student.run_dir`` names, when it is on this machine."""
    own = bundle_dir / "student.json"
    if own.is_file() and own.with_suffix(".safetensors").is_file():
        return own, None, None
    student = (manifest.provenance or {}).get("student") or {}
    run_dir = student.get("run_dir")
    if not run_dir:
        return None, None, "the bundle holds no student weights and its provenance names no run directory"
    candidate = Path(run_dir) / "student.json"
    if not (candidate.is_file() and candidate.with_suffix(".safetensors").is_file()):
        return None, None, (f"the bundle holds no student weights and its provenance run directory "
                            f"{run_dir} has no student.json + student.safetensors here")
    return candidate, student.get("weights_sha256"), None


# ----------------------------------------------------------------------------- rows


def _knn(manifest: Manifest, variant: str | None,
         fallback: str | None = None) -> tuple[float | None, float | None]:
    """(top-1, knn_delta) the export gate measured: of torch FP32 (``variant=None``), of a variant
    as its manifest entry runs it, or under another setting the gate judged (``fallback``: its
    key in the variant's figures, ``f32_fallback``)."""
    knn = ((manifest.validation or {}).get("knn") or {})
    figures = knn.get("torch_fp32") if variant is None else (knn.get("variants") or {}).get(variant)
    if fallback and isinstance(figures, dict):
        figures = figures.get(fallback)
    if not isinstance(figures, dict) or figures.get("top1") is None:
        return None, None
    from edgedistill.runtime.recommend import delta_of

    return float(figures["top1"]), (0.0 if variant is None else delta_of(figures))


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
    threads_asked: bool = True  # --threads given (else each machine's default: its usable CPUs)

    @property
    def per_round(self) -> RunSlice:
        """What each interleaved round asks of a row: a share of the runs or of the seconds."""
        if self.runs is not None:
            return {"runs": -(-self.runs // self.rounds)}
        return {"seconds": float(self.seconds) / self.rounds, "min_runs": 1}

    @classmethod
    def parse(cls, backends: Any, precisions: Any, threads: Any, batches: Any, warmup: int, runs: int | None,
              seconds: float | None, rounds: int, static_shapes: bool, device: str | None = "cpu") -> "BenchOptions":
        """The options, checked; the default threads are the usable CPUs (and 1 as well on a
        runtime's own device). ``device`` None: no row runs here (only on SSH devices, which
        check and default their thread counts themselves)."""
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
        # a runtime's own device gets 1 thread too (a web page has several only when cross-origin isolated)
        default_threads = [] if device is None else sorted({1, usable_cpus()}) \
            if device.strip().lower() in registry.devices() else [usable_cpus()]
        asked = parse_list(threads, "threads", kind=int) or []
        return cls(backends=parse_list(backends, "backends", choices=BACKENDS) or list(BACKENDS),
                   precisions=parse_list(precisions, "precision", choices=PRECISIONS) or list(PRECISIONS),
                   threads=[t if device is None else check_count(t, "--threads") for t in asked] or default_threads,
                   threads_asked=bool(asked),
                   batches=sorted(parse_list(batches, "batch", kind=int) or [1]), warmup=int(warmup),
                   runs=None if runs is None else int(runs), seconds=seconds,
                   rounds=int(min(rounds, runs)) if runs is not None else int(rounds),
                   static_shapes=bool(static_shapes))


class DevicePlanner(Protocol):
    """An SSH device deciding its own rows (``bench.remote.RemoteDevice``)."""

    def plan(self, manifest: Manifest, bundle_dir: Path, opts: BenchOptions) -> tuple[list[Row], list[Skip]]: ...


def plan_bench(manifest: Manifest, bundle_dir: Path, opts: BenchOptions, device: str | None,
               devices: dict[str, Any], remotes: Sequence[DevicePlanner] = ()) -> tuple[list[Row], list[Skip]]:
    """The rows to measure for ``device`` (None: none here) and on each SSH device of
    ``remotes``, and the ones left out with the reason; an error when nothing can be measured."""
    from edgedistill.utils import cpu_has_native_bf16

    shape = manifest.input.shape
    if manifest.input.layout != "NCHW" or not all(isinstance(v, int) and v > 0 for v in shape[1:]):
        raise EdgeDistillError(f"bench needs a static NCHW image input, the bundle has {shape}")
    rows: list[Row] = []
    skipped: list[Skip] = []
    if device is not None:
        for runtime in registry.RUNTIMES:  # a device of a runtime's own needs that runtime
            if runtime.device and device.strip().lower() == runtime.device and runtime.name in opts.backends:
                runtime.require()
        targets, reasons = device_targets(device, devices)
        for runtime in registry.RUNTIMES:
            if devices.get(runtime.name) is None:
                reasons.setdefault(runtime.name, runtime.unavailable_reason(devices.get(runtime.name + "_error")))
        rows, skipped = plan_rows(manifest, bundle_dir, backends=opts.backends, precisions=opts.precisions,
                                  threads=opts.threads, targets=targets, reasons=reasons,
                                  native_bf16=cpu_has_native_bf16())
        if rows:
            _check_memory(shape, opts, rows)
    for remote in remotes:
        theirs, left_out = remote.plan(manifest, bundle_dir, opts)
        rows, skipped = rows + theirs, skipped + left_out
    if not rows:
        why = "; ".join(sorted({s["reason"] for s in skipped})) or "nothing matches the options"
        raise EdgeDistillError(f"nothing to benchmark in {bundle_dir} with these options ({why})")
    opts.threads = sorted({r.threads for r in rows})  # each machine's defaults, where --threads was not given
    return rows, skipped


def _check_memory(shape: list[Any], opts: BenchOptions, rows: list["Row"]) -> None:
    """The rows of one thread count stay loaded together, each holding every batch size it
    measures: refuse batch sizes whose inputs and activations cannot fit in memory."""
    from edgedistill.limits import check_batch_memory, image_memory

    loaded = max(sum(1 for r in rows if r.threads == t) for t in {r.threads for r in rows})
    check_batch_memory(max(opts.batches), image_memory(shape[2], shape[3]), "--batch", copies=loaded)


class _Planner:
    """Collects rows and skips for one bundle (``plan_rows``): the ``RowPlanner`` each runtime
    decides its rows with."""

    def __init__(self, manifest: Manifest, bundle_dir: Path, precisions: Sequence[str], threads: Sequence[int],
                 targets: dict[str, str], reasons: dict[str, str], native_bf16: bool) -> None:
        self.manifest, self.bundle_dir, self.precisions = manifest, bundle_dir, precisions
        self.thread_counts = list(threads)
        self.targets, self.reasons, self.native_bf16 = targets, reasons, native_bf16
        self.variants: dict[str, VariantEntry] = manifest.variants
        self.cpu = all(targets[r.name] in (r.cpu_target, r.device) for r in registry.RUNTIMES if r.name in targets)
        self.rows: list[Row] = []
        self.skipped: list[Skip] = []

    def target(self, runtime: str) -> str | None:
        return self.targets.get(runtime)

    def reason(self, runtime: str) -> str:
        return self.reasons.get(runtime, f"{runtime} is not installed")

    def skip(self, backend: str, variant: str, precision: str, reason: str) -> None:
        entry = Skip(backend=backend, variant=variant, precision=precision, reason=reason)
        if entry not in self.skipped:
            self.skipped.append(entry)

    def size(self, name: str) -> int:
        total = self.variants[name].total_size_bytes
        if total is None:
            from edgedistill.runtime.manifest import variant_files

            total = sum(p.stat().st_size for p, _ in variant_files(self.manifest, self.bundle_dir, name)
                        if p.is_file())
        return int(total)

    def knn(self, variant: str | None, fallback: str | None = None) -> tuple[float | None, float | None]:
        return _knn(self.manifest, variant, fallback)

    def has_variant(self, fmt: str, precision: str) -> bool:
        return any(v.format == fmt and v.precision == precision for v in self.variants.values())

    def add(self, threads: int, **kw: Any) -> None:
        if kw["precision"] in self.precisions:
            self.rows.append(Row(threads=threads, **kw))

    def torch(self, t: int) -> None:
        """The student in fp32 (and bf16 autocast where the CPU has it)."""
        if "torch" in self.reasons:
            return self.skip("torch", "student", "fp32", self.reasons["torch"])
        if importlib.util.find_spec("torch") is None:
            return self.skip("torch", "student", "fp32", "torch is not installed")
        source, sha, why = student_source(self.manifest, self.bundle_dir)
        if source is None:
            return self.skip("torch", "student", "fp32", why or "no weights")
        h, w = self.manifest.input.shape[2:4]
        common = dict(backend="torch", variant="student", device="cpu", model=str(source),
                      size_bytes=source.with_suffix(".safetensors").stat().st_size,
                      extra={"weights_sha256": sha, "img_size": [h, w]})
        top1, delta = _knn(self.manifest, None)
        self.add(t, precision="fp32", knn_top1=top1, knn_delta=delta, **common)
        if "bf16" in self.precisions and not self.native_bf16:
            self.skip("torch", "student", "bf16", "this CPU has no native bf16")
        elif self.native_bf16:
            self.add(t, precision="bf16", inference_precision="bf16", **common)


def plan_rows(manifest: Manifest, bundle_dir: Path, *, backends: Sequence[str], precisions: Sequence[str],
              threads: Sequence[int], targets: dict[str, str], reasons: dict[str, str],
              native_bf16: bool) -> tuple[list[Row], list[Skip]]:
    """The rows to measure, and the ones left out with the reason.

    torch: the student in fp32 (and bf16 autocast where the CPU has it). Every other backend
    is a runtime of the registry: for each variant of a format it reads, it adds its rows
    (``Runtime.rows``). k-NN figures go only to rows that run exactly as the export's
    accuracy gate ran them.
    """
    planner = _Planner(manifest, bundle_dir, precisions, threads, targets, reasons, native_bf16)
    readers = [r for r in registry.RUNTIMES if r.name in backends]
    for t in threads:
        if "torch" in backends:
            planner.torch(t)
        for name, entry in planner.variants.items():
            lost = missing_file(manifest, bundle_dir, name)  # the bundle's other variants still run
            for runtime in readers:
                if entry.format in runtime.reads:
                    if lost:
                        planner.skip(runtime.name, name, entry.precision, f"{lost} is missing from the bundle")
                    else:
                        runtime.rows(planner, t, name, entry)
    return planner.rows, planner.skipped
