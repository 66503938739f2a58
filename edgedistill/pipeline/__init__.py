"""``edgedistill pipeline CONFIG``: every stage from one YAML file, resumable stage by stage.

  runs/<name>/teacher/   pretrain (DINO)         skipped when teacher.safetensors exists
  runs/<name>/student/   distill (AttnDistill)   skipped when student.safetensors exists
  runs/<name>/eval.json  k-NN: teacher, student, random-init student (and teacher, when pretrained)
  export/<name>/         the bundle of export.formats (+ INT8) with its gates (+ the opt-in formats when pipeline.edge asks)
  runs/<name>/bench.json latency per backend and precision (+ the opt-in runtimes' rows when pipeline.edge asks)
  runs/<name>/report/    README.md + loss curves, attention maps, latency vs k-NN (PNG)

A stage interrupted half-way resumes from its checkpoint on the next run; a stage already done
is skipped. The summary table and the report (``pipeline.report``) are rebuilt every time. A
pipeline holds ``runs/<name>/`` while it runs: a second one of that name fails at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypedDict

from edgedistill.config import Config, check_pretrain_sizes
from edgedistill.pipeline.report import StageRecord, Summary
from edgedistill.rundir import RUNS_ROOT, RunDir
from edgedistill.utils import atomic_write_json, directory_lock, read_json

if TYPE_CHECKING:
    from edgedistill.bench.records import BenchReport

__all__ = ["PipelinePaths", "EdgeTargets", "PipelineResult", "run_pipeline", "pipeline_teacher", "edge_targets"]

EXPORT_ROOT = Path("export")


@dataclass(frozen=True)
class PipelinePaths:
    """Where each stage of one pipeline run reads and writes."""

    root: Path
    teacher: RunDir
    student: RunDir
    eval: Path
    export_root: Path
    bundle: Path
    bench: Path
    report: Path

    @classmethod
    def for_config(cls, cfg: Config, runs_root: Path = RUNS_ROOT, export_root: Path = EXPORT_ROOT) -> "PipelinePaths":
        root = Path(runs_root) / cfg.run.name
        return cls(root=root, teacher=RunDir.of(root / "teacher"), student=RunDir.of(root / "student"),
                   eval=root / "eval.json", export_root=Path(export_root), bundle=Path(export_root) / cfg.run.name,
                   bench=root / "bench.json", report=root / "report")


def pipeline_teacher(cfg: Config, paths: PipelinePaths) -> Config:
    """The config the later stages see: with a ``pretrain`` stage, its run is the teacher."""
    if "pretrain" not in cfg.pipeline.stages:
        return cfg
    return replace(cfg, teacher=replace(cfg.teacher, source=str(paths.teacher.path)))


class PipelineResult(TypedDict):
    stages: list[StageRecord]
    summary: Summary
    report: str  # report/README.md
    bench: BenchReport | None


def run_pipeline(cfg: Config, *, runs_root: Path = RUNS_ROOT, export_root: Path = EXPORT_ROOT,
                 console: Any = None) -> PipelineResult:
    """Run the configured stages; returns what they left (:class:`PipelineResult`)."""
    paths = PipelinePaths.for_config(cfg, runs_root, export_root)
    if "pretrain" in cfg.pipeline.stages and not paths.teacher.has_backbone("teacher"):
        check_pretrain_sizes(cfg)
    if "bench" in cfg.pipeline.stages:
        from edgedistill.bench.runner import split_devices

        split_devices(cfg.bench.devices)  # a mistyped ssh:// device fails now, not after training
    with directory_lock(paths.root, instead="another run.name"):
        return _run_stages(cfg, paths, console)


def _run_stages(cfg: Config, paths: PipelinePaths, console: Any) -> PipelineResult:
    from edgedistill.pipeline.report import summarize, write_report
    from edgedistill.train.stages import distill, pretrain

    paths.root.mkdir(parents=True, exist_ok=True)
    stages: list[StageRecord] = []

    def stage(name: str, done: bool, work: Callable[[], Any]) -> None:
        if name not in cfg.pipeline.stages:
            return
        if done:
            stages.append(StageRecord(stage=name, status="skipped (already done)", seconds=0.0))
            return
        if console is not None:
            console.rule(f"[bold]{name}")
        started = time.perf_counter()
        work()
        stages.append(StageRecord(stage=name, status="done", seconds=time.perf_counter() - started))

    taught = pipeline_teacher(cfg, paths)
    stage("pretrain", paths.teacher.has_backbone("teacher"),
          lambda: pretrain(cfg, paths.teacher.path, resume=paths.teacher.has_checkpoint(), console=console))
    stage("distill", paths.student.has_backbone("student"),
          lambda: distill(taught, paths.student.path, resume=paths.student.has_checkpoint(), console=console))
    stage("eval", paths.eval.exists(), lambda: _evaluate(taught, paths, console))
    stage("export", (paths.bundle / "manifest.json").exists(), lambda: _export(cfg, paths, console))
    stage("bench", paths.bench.exists(), lambda: _bench(cfg, paths, console))

    summary = summarize(paths, taught)
    report = write_report(taught, paths, summary, stages)
    bench = read_json(paths.bench) if paths.bench.exists() else None
    return PipelineResult(stages=stages, summary=summary, report=str(report), bench=bench)


# ----------------------------------------------------------------------------- stages


def _evaluate(cfg: Config, paths: PipelinePaths, console: Any) -> None:
    """k-NN of the teacher, the student and random-init twins of both, on the same splits."""
    from edgedistill.eval.evaluate import evaluate_knn, load_splits
    from edgedistill.eval.models import open_model, open_torch_module, standard_spec
    from edgedistill.models.teacher import build_teacher

    d = cfg.data
    where = {"train": d.path, "val": d.val_path} if d.val_path else {"data": d.path}
    splits = load_splits(**where, img_size=d.img_size, max_bad_images=d.max_bad_images)

    def random_twin(meta: dict[str, Any]) -> Any:
        """The same architecture as a saved backbone pair, at a reproducible random init."""
        kw = meta["kwargs"]
        return open_model("random", arch=meta["arch"], img_size=kw["img_size"], patch_size=kw.get("patch_size", 0),
                          depth=kw.get("depth", 0), seed=cfg.run.seed)

    def teacher() -> Any:
        module, info = build_teacher(cfg.teacher, cfg.teacher_img_size)
        spec = standard_spec(cfg.teacher_img_size, d.mean, d.std)  # what distillation fed it
        return open_torch_module(module, cfg.teacher.source, spec, info=info)

    models = {
        "teacher": teacher,
        "student": lambda: open_model(paths.student.path),
        "random_student": lambda: random_twin(paths.student.backbone_meta("student")),
    }
    teacher_run = RunDir.of(cfg.teacher.source)
    if teacher_run.has_backbone("teacher"):  # a pretrained teacher: what pretraining gained over its random init
        models["random_teacher"] = lambda: random_twin(teacher_run.backbone_meta("teacher"))
    results: dict[str, Any] = {}
    for name, make in models.items():
        results[name] = evaluate_knn(make(), splits, ks=cfg.eval.k, temperature=cfg.eval.temperature,
                                     batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers,
                                     progress=console is not None)
        if console is not None:
            console.print(f"k-NN {name}: top-1 {results[name]['top1']:.2f}%")
    atomic_write_json(paths.eval, results)


@dataclass(frozen=True)
class EdgeTargets:
    """What ``pipeline.edge`` adds to the configured export and bench: the opt-in runtimes of
    the registry (their own install extra, or a device of their own)."""

    formats: tuple[str, ...] = ()  # export formats added
    backends: tuple[str, ...] = ()  # bench backends added
    device: str = "cpu"  # a runtime's own device when its rows are added, else cpu


def edge_targets(cfg: Config) -> EdgeTargets:
    """``pipeline.edge``: ``auto`` adds each opt-in runtime installed here, ``on`` requires
    them all (an error naming what to install), ``off`` adds none."""
    from edgedistill.runtime import registry

    mode = cfg.pipeline.edge
    opt_in = [r for r in registry.RUNTIMES if not r.default]
    if mode == "off":
        return EdgeTargets()
    if mode == "on":
        for runtime in opt_in:
            runtime.require(build=bool(runtime.format))
        chosen = opt_in
    else:
        chosen = [r for r in opt_in if r.missing(build=bool(r.format)) is None]
    device = next((r.device for r in chosen if r.device), None)
    return EdgeTargets(formats=tuple(r.format for r in chosen if r.format), backends=tuple(r.name for r in chosen),
                       device=device or "cpu")


def _export(cfg: Config, paths: PipelinePaths, console: Any) -> None:
    from edgedistill.export.bundle import export_bundle

    # data=None: the accuracy gate takes the student run's own data when it is labeled (and
    # is skipped with a warning, INT8 then never the default variant, when it is not).
    from edgedistill.export.plan import ExportOptions

    e = cfg.export
    formats = tuple(dict.fromkeys((*e.formats, *edge_targets(cfg).formats)))
    options = ExportOptions(int8=e.int8, calib_size=e.calib_size, opset=e.opset, min_cosine=e.parity_min_cosine,
                            max_drop=e.max_knn_drop, int8_hint=e.int8_precision_hint,
                            recovery_attempts=e.int8_recovery_attempts, recovery_seconds=e.int8_recovery_seconds,
                            num_workers=cfg.data.num_workers)
    export_bundle(paths.student.path, out_root=paths.export_root, name=cfg.run.name, formats=formats, data=None,
                  force=True, options=options, console=console)


def _bench(cfg: Config, paths: PipelinePaths, console: Any) -> None:
    """Measure the bundle; the table is the caller's to render (``result["bench"]``), on
    stdout where a log keeps it."""
    from edgedistill.bench.runner import run_bench

    b = cfg.bench
    edge = edge_targets(cfg)  # the opt-in runtimes' rows join the configured ones
    backends = tuple(dict.fromkeys((*b.backends, *edge.backends)))
    # a runtime's own device stands in for cpu (its rows beside the native CPU rows); SSH devices join them
    devices = [edge.device if d.strip().lower() == "cpu" else d for d in b.devices]
    report = run_bench(paths.bundle, device=devices, backends=backends,
                       threads=b.threads, batches=b.batch, runs=b.runs, warmup=b.warmup,
                       progress=console is not None, console=console, remote_python=b.remote_python or None)
    atomic_write_json(paths.bench, report)
