"""``edgedistill pipeline CONFIG``: every stage from one YAML file, resumable stage by stage.

  runs/<name>/teacher/   pretrain (DINO)         skipped when teacher.safetensors exists
  runs/<name>/student/   distill (AttnDistill)   skipped when student.safetensors exists
  runs/<name>/eval.json  k-NN: teacher, student, random-init student (and teacher, when pretrained)
  export/<name>/         ONNX + OpenVINO (+ INT8) bundle with its gates
  runs/<name>/bench.json latency per backend and precision
  runs/<name>/report/    README.md + loss curves, attention maps, latency vs k-NN (PNG)

A stage interrupted half-way resumes from its checkpoint on the next run; a stage already done
is skipped. The summary table and the report are rebuilt every time.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from edgedistill.config import Config
from edgedistill.utils import atomic_write_json, atomic_write_text, read_json


def stage_paths(cfg: Config, runs_root: Path = Path("runs"), export_root: Path = Path("export")) -> dict[str, Path]:
    root = runs_root / cfg.run.name
    return {
        "root": root, "teacher": root / "teacher", "student": root / "student", "eval": root / "eval.json",
        "export_root": export_root, "bundle": export_root / cfg.run.name, "bench": root / "bench.json",
        "report": root / "report",
    }


def run_pipeline(cfg: Config, *, runs_root: Path = Path("runs"), export_root: Path = Path("export"),
                 console: Any = None) -> dict[str, Any]:
    """Run the configured stages; returns ``{"stages": [...], "summary": {...}, "report": path}``."""
    paths = stage_paths(cfg, runs_root, export_root)
    paths["root"].mkdir(parents=True, exist_ok=True)
    stages: list[dict[str, Any]] = []

    def stage(name: str, done: bool, work: Callable[[], Any]) -> None:
        if name not in cfg.pipeline.stages:
            return
        if done:
            stages.append({"stage": name, "status": "skipped (already done)", "seconds": 0.0})
            return
        if console is not None:
            console.rule(f"[bold]{name}")
        started = time.perf_counter()
        work()
        stages.append({"stage": name, "status": "done", "seconds": time.perf_counter() - started})

    from edgedistill.train.runner import distill, pretrain

    teacher_cfg = cfg
    if "pretrain" in cfg.pipeline.stages:
        stage("pretrain", (paths["teacher"] / "teacher.safetensors").exists(),
              lambda: pretrain(cfg, paths["teacher"], resume=_has_checkpoint(paths["teacher"]), console=console))
        teacher_cfg = replace(cfg, teacher=replace(cfg.teacher, source=str(paths["teacher"])))
    stage("distill", (paths["student"] / "student.safetensors").exists(),
          lambda: distill(teacher_cfg, paths["student"], resume=_has_checkpoint(paths["student"]), console=console))
    stage("eval", paths["eval"].exists(), lambda: _evaluate(teacher_cfg, paths, console))
    stage("export", (paths["bundle"] / "manifest.json").exists(), lambda: _export(cfg, paths, console))
    stage("bench", paths["bench"].exists(), lambda: _bench(cfg, paths, console))

    summary = summarize(paths)
    report = write_report(cfg, paths, summary, stages)
    return {"stages": stages, "summary": summary, "report": str(report)}


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.pt").is_file()


# ----------------------------------------------------------------------------- stages


def _evaluate(cfg: Config, paths: dict[str, Path], console: Any) -> None:
    """k-NN of the teacher, the student and random-init twins of both, on the same splits."""
    from edgedistill.eval.evaluate import evaluate_knn, load_splits
    from edgedistill.eval.models import open_model

    d = cfg.data
    where = {"train": d.path, "val": d.val_path} if d.val_path else {"data": d.path}
    splits = load_splits(**where, img_size=d.img_size, max_bad_images=d.max_bad_images)
    student_meta = read_json(paths["student"] / "student.json")

    def random_twin(meta: dict[str, Any]) -> Any:
        """The same architecture as a saved backbone pair, at a reproducible random init."""
        kw = meta["kwargs"]
        return open_model("random", arch=meta["arch"], img_size=kw["img_size"], patch_size=kw.get("patch_size", 0),
                          depth=kw.get("depth", 0), seed=cfg.run.seed)

    models = {
        "teacher": lambda: open_model(cfg.teacher.source, arch=cfg.teacher.arch, img_size=cfg.data.img_size,
                                      patch_size=cfg.teacher.patch_size, depth=cfg.teacher.depth),
        "student": lambda: open_model(paths["student"]),
        "random_student": lambda: random_twin(student_meta),
    }
    teacher_json = Path(cfg.teacher.source) / "teacher.json"
    if teacher_json.is_file():  # a pretrained teacher: what pretraining gained over its random init
        teacher_meta = read_json(teacher_json)
        models["random_teacher"] = lambda: random_twin(teacher_meta)
    results: dict[str, Any] = {}
    for name, make in models.items():
        results[name] = evaluate_knn(make(), splits, ks=cfg.eval.k, temperature=cfg.eval.temperature,
                                     batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers,
                                     progress=console is not None)
        if console is not None:
            console.print(f"k-NN {name}: top-1 {results[name]['top1']:.2f}%")
    atomic_write_json(paths["eval"], results)


def _export(cfg: Config, paths: dict[str, Path], console: Any) -> None:
    from edgedistill.export.bundle import export_bundle

    # data=None: the accuracy gate takes the student run's own data when it is labeled (and
    # is skipped with a warning, INT8 then never the default variant, when it is not).
    e = cfg.export
    export_bundle(paths["student"], out_root=paths["export_root"], name=cfg.run.name, formats=e.formats,
                  int8=e.int8, data=None, calib_size=e.calib_size, opset=e.opset,
                  min_cosine=e.parity_min_cosine, max_drop=e.max_knn_drop, int8_hint=e.int8_precision_hint, force=True,
                  num_workers=cfg.data.num_workers, console=console)


def _bench(cfg: Config, paths: dict[str, Path], console: Any) -> None:
    from edgedistill.bench.runner import run_bench

    from edgedistill.bench.report import render_table

    b = cfg.bench
    report = run_bench(paths["bundle"], backends=b.backends, threads=b.threads, batches=b.batch,
                       runs=b.runs, warmup=b.warmup, progress=console is not None, console=console)
    if console is not None:
        render_table(report, console)
    atomic_write_json(paths["bench"], report)


# ----------------------------------------------------------------------------- summary and report


def summarize(paths: dict[str, Path]) -> dict[str, Any]:
    """The figures a newcomer wants on one screen, from whatever the stages left."""
    summary: dict[str, Any] = {"knn": {}, "latency": [], "files": {}}
    if paths["eval"].exists():
        for name, result in read_json(paths["eval"]).items():
            summary["knn"][name] = result["top1"]
    manifest_path = paths["bundle"] / "manifest.json"
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        knn = ((manifest.get("validation") or {}).get("knn") or {}).get("variants") or {}
        for variant, entry in manifest.get("variants", {}).items():
            summary["files"][variant] = entry.get("total_size_bytes", entry.get("size_bytes"))
            score = knn.get(variant, {})
            if isinstance(score, dict) and score.get("top1") is not None:
                summary["knn"][f"bundle:{variant}"] = score["top1"]
    if paths["bench"].exists():
        from edgedistill.bench.report import csv_lines

        lines = csv_lines(read_json(paths["bench"]))
        smallest = min((line["batch"] for line in lines), default=1)
        summary["latency"] = [line for line in lines if line["batch"] == smallest]
        for line in summary["latency"]:  # OpenVINO rows differ by precision hint: say which
            if line.get("backend") == "openvino" and line.get("inference_precision"):
                line["precision"] = f"{line['precision']}@{line['inference_precision']}"
    return summary


def write_report(cfg: Config, paths: dict[str, Path], summary: dict[str, Any], stages: list[dict[str, Any]]) -> Path:
    """``report/README.md`` plus loss curves, attention maps and latency vs k-NN (PNG)."""
    report = paths["report"]
    report.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    if _plot_losses(paths, report / "loss_curves.png"):
        figures.append(("Training losses", "loss_curves.png"))
    if _plot_attention(cfg, paths, report / "attention.png"):
        figures.append(("Last-block CLS attention, teacher and student", "attention.png"))
    if _plot_latency(paths, report / "latency_vs_knn.png"):
        figures.append(("Latency vs k-NN top-1", "latency_vs_knn.png"))

    lines = [f"# edgedistill pipeline report: {cfg.run.name}", "", "## k-NN top-1 (k=20)", "",
             "| model | top-1 % |", "| --- | --- |"]
    lines += [f"| {name} | {value:.2f} |" for name, value in summary["knn"].items()]
    if summary["latency"]:
        lines += ["", f"## Latency, batch {summary['latency'][0]['batch']}", "",
                  "| backend | variant | precision | threads | p50 ms | p90 ms | speed-up |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in summary["latency"]:
            lines.append(f"| {row['backend']} | {row['variant']} | {row['precision']} | {row['threads']} "
                         f"| {_num(row['p50_ms'])} | {_num(row['p90_ms'])} | {_num(row['speedup'])} |")
    if summary["files"]:
        lines += ["", "## Bundle files", "", "| variant | MB |", "| --- | --- |"]
        lines += [f"| {v} | {(size or 0) / 1e6:.2f} |" for v, size in summary["files"].items()]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} |" for s in stages]
    for title, name in figures:
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    atomic_write_text(report / "README.md", "\n".join(lines) + "\n")
    return report


def _plot_losses(paths: dict[str, Path], out: Path) -> bool:
    from edgedistill.train.loop import read_metrics

    runs = {name: read_metrics(paths[name]) for name in ("teacher", "student")}
    runs = {name: [r for r in records if "loss" in r] for name, records in runs.items()}
    runs = {name: records for name, records in runs.items() if records}
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
    for ax, (name, records) in zip(axes[0], runs.items()):
        steps = [r["step"] for r in records]
        keys = [k for k in ("loss", "cls", "attn") if k in records[0]]
        for key in keys:
            ax.plot(steps, [r[key] for r in records], label=key)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title("DINO pretraining (teacher)" if name == "teacher" else "AttnDistill (student)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def _plot_attention(cfg: Config, paths: dict[str, Path], out: Path) -> bool:
    if not (paths["student"] / "student.safetensors").exists():
        return False
    from edgedistill.data import build_dataset
    from edgedistill.eval.attention import attention_figure
    from edgedistill.eval.models import open_model
    from edgedistill.models.teacher import load_teacher

    dataset = build_dataset(cfg.data.path, "val", None, val_path=cfg.data.val_path, img_size=cfg.data.img_size)
    count = min(cfg.pipeline.attention_images, len(dataset))
    picks = [int(i * len(dataset) / count) for i in range(count)]
    folder = paths["report"] / "attention_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in picks:
        image, _ = dataset[i]
        path = folder / f"val_{i:05d}.png"
        image.save(path)
        images.append(path)
    student = open_model(paths["student"])
    teacher_source = str(paths["teacher"]) if (paths["teacher"] / "teacher.json").exists() else cfg.teacher.source
    teacher, _ = load_teacher(teacher_source, cfg.teacher.arch, cfg.data.img_size, cfg.teacher.patch_size,
                              **({"depth": cfg.teacher.depth} if cfg.teacher.depth else {}))
    attention_figure(student, teacher, images, out, temperature=cfg.distill.temperature)
    return True


def _plot_latency(paths: dict[str, Path], out: Path) -> bool:
    if not paths["bench"].exists():
        return False
    from edgedistill.bench.report import write_plot

    return write_plot(read_json(paths["bench"]), out)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_summary(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    summary = result["summary"]
    table = Table(title="edgedistill pipeline")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in summary["knn"].items():
        table.add_row(f"k-NN top-1 {name}", f"{value:.2f} %")
    for row in summary["latency"]:
        label = f"p50 {row['backend']} {row['precision']} ({row['variant']}, {row['threads']} threads, batch {row['batch']})"
        table.add_row(label, f"{_num(row['p50_ms'])} ms")
    for variant, size in summary["files"].items():
        table.add_row(f"file {variant}", f"{(size or 0) / 1e6:.2f} MB")
    for stage in result["stages"]:
        table.add_row(f"stage {stage['stage']}", f"{stage['status']} {stage['seconds']:.0f} s")
    table.add_row("report", result["report"])
    console.print(table)
