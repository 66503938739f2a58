"""The pipeline's closing summary and ``runs/<name>/report/``: README.md with the k-NN and
latency tables, loss curves, attention maps and latency vs k-NN (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from edgedistill.config import Config
from edgedistill.utils import atomic_write_text, read_json

if TYPE_CHECKING:
    from edgedistill.pipeline import PipelinePaths, PipelineResult

__all__ = ["summarize", "write_report", "render_summary"]



class Summary(TypedDict):
    """The figures a newcomer wants on one screen: k-NN top-1 by model, the latency lines of
    the smallest batch (bench's CSV lines), file sizes by variant, bench's ``Recommended`` lines."""

    knn: dict[str, float]
    latency: list[dict[str, Any]]
    files: dict[str, int | None]
    recommended: list[str]
    trouble: list[str]  # what went wrong in training (``training_trouble``)


class StageRecord(TypedDict):
    stage: str
    status: str
    seconds: float


COLLAPSE_MARGIN = 0.01  # a DINO loss within 1% of ln K is the collapse value


def training_trouble(cfg: Config, paths: "PipelinePaths", knn: dict[str, float]) -> list[str]:
    """Training that went wrong, in a sentence each: a DINO loss that ended at its collapse
    value (ln K: the output uniform over the head's K dimensions, whatever the image), a model
    whose k-NN is not above its random-init twin's."""
    import math

    trouble = []
    records = [r for r in paths.teacher.read_metrics() if "loss" in r]
    if records and "pretrain" in cfg.pipeline.stages:
        collapse = math.log(cfg.pretrain.out_dim)
        last, low = records[-1]["loss"], min(r["loss"] for r in records)
        if last >= collapse * (1 - COLLAPSE_MARGIN):
            trouble.append(f"teacher: the DINO loss ended at {last:.4f}, its collapse value ln({cfg.pretrain.out_dim}) = "
                           f"{collapse:.4f} (lowest {low:.4f}): the head's output no longer depends on the image; "
                           "lower pretrain.teacher_temp or pretrain.blr")
    for model, twin in (("teacher", "random_teacher"), ("student", "random_student")):
        if model in knn and twin in knn and knn[model] <= knn[twin]:
            trouble.append(f"{model}: k-NN top-1 {knn[model]:.2f} is not above its random init's {knn[twin]:.2f}: "
                           "training has not helped it yet (train longer, or check the teacher)")
    return trouble


def summarize(paths: "PipelinePaths", cfg: Config | None = None) -> Summary:
    """The figures a newcomer wants on one screen, from whatever the stages left (with the
    run's config: what went wrong in training too)."""
    summary = Summary(knn={}, latency=[], files={}, recommended=[], trouble=[])
    if paths.eval.exists():
        for name, result in read_json(paths.eval).items():
            summary["knn"][name] = result["top1"]
    if cfg is not None:
        summary["trouble"] = training_trouble(cfg, paths, summary["knn"])
    manifest_path = paths.bundle / "manifest.json"
    if manifest_path.exists():
        from edgedistill.runtime.manifest import validate_manifest

        manifest = validate_manifest(read_json(manifest_path), manifest_path)
        knn = ((manifest.validation or {}).get("knn") or {}).get("variants") or {}
        for variant, entry in manifest.variants.items():
            summary["files"][variant] = entry.total_size_bytes if entry.total_size_bytes is not None else entry.size_bytes
            score = knn.get(variant, {})
            if isinstance(score, dict) and score.get("top1") is not None:
                summary["knn"][f"bundle:{variant}"] = score["top1"]
    if paths.bench.exists():
        from edgedistill.bench.report import csv_lines, recommended_lines
        from edgedistill.runtime.rows import precision_label

        bench = read_json(paths.bench)
        engines = {row["id"]: row.get("engine", row["backend"]) for row in bench["rows"]}
        lines = csv_lines(bench)
        smallest = min((line["batch"] for line in lines), default=1)
        # the rows the export's gate validated first, then the others (no k-NN figure), as bench lists them
        summary["latency"] = sorted((line for line in lines if line["batch"] == smallest),
                                    key=lambda line: line.get("knn_top1") is None)
        summary["recommended"] = recommended_lines(bench) if bench.get("best") else []
        for line in summary["latency"]:  # rows of one variant differ by precision hint: say which
            if line.get("backend") != "torch":
                line["precision"] = precision_label(line["precision"], line.get("inference_precision"))
            if engines.get(line["id"], line["backend"]) != line["backend"]:  # an engine of the runtime (wasm, webgpu)
                line["backend"] = f"{line['backend']} ({line['device']})"
            if line.get("remote"):  # measured on an SSH device
                line["backend"] = f"{line['backend']} @{line['remote']}"
    return summary


def write_report(cfg: Config, paths: "PipelinePaths", summary: Summary, stages: list[StageRecord]) -> Path:
    """``report/README.md`` plus loss curves, attention maps and latency vs k-NN (PNG)."""
    report = paths.report
    report.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    if _plot_losses(paths, report / "loss_curves.png"):
        figures.append(("Training losses", "loss_curves.png"))
    if _plot_attention(cfg, paths, report / "attention.png"):
        figures.append(("Last-block CLS attention, teacher and student", "attention.png"))
    if _plot_latency(paths, report / "latency_vs_knn.png"):
        figures.append(("Latency vs k-NN top-1", "latency_vs_knn.png"))

    lines = [f"# edgedistill pipeline report: {cfg.run.name}", ""]
    if summary["trouble"]:
        lines += ["## Training trouble", ""] + [f"- {line}" for line in summary["trouble"]] + [""]
    lines += ["## k-NN top-1 (k=20)", "", "| model | top-1 % |", "| --- | --- |"]
    lines += [f"| {name} | {value:.2f} |" for name, value in summary["knn"].items()]
    if summary["latency"]:
        lines += ["", f"## Latency, batch {summary['latency'][0]['batch']}", "",
                  "| backend | variant | precision | threads | p50 ms | p90 ms | speed-up | k-NN top-1 | knn_delta |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in summary["latency"]:
            delta = row.get("knn_delta")
            lines.append(f"| {row['backend']} | {row['variant']} | {row['precision']} | {row['threads']} "
                         f"| {_num(row['p50_ms'])} | {_num(row['p90_ms'])} | {_num(row['speedup'])} "
                         f"| {_num(row.get('knn_top1'))} | {'-' if delta is None else f'{delta:+.2f}'} |")
        lines += ["", "knn_delta: the variant's k-NN top-1 minus torch FP32's, in points (positive: better); "
                  "-: not validated by the export's gate (listed last)."]
        lines += ["", *summary["recommended"]] if summary["recommended"] else []
    if summary["files"]:
        lines += ["", "## Bundle files", "", "| variant | MB |", "| --- | --- |"]
        lines += [f"| {v} | {(size or 0) / 1e6:.2f} |" for v, size in summary["files"].items()]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} |" for s in stages]
    for title, name in figures:
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    atomic_write_text(report / "README.md", "\n".join(lines) + "\n")
    return report


def _plot_losses(paths: "PipelinePaths", out: Path) -> bool:
    runs = {"teacher": paths.teacher.read_metrics(), "student": paths.student.read_metrics()}
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


def _plot_attention(cfg: Config, paths: "PipelinePaths", out: Path) -> bool:
    if not paths.student.has_backbone("student"):
        return False
    from edgedistill.data import build_dataset
    from edgedistill.eval.attention import attention_figure
    from edgedistill.eval.models import open_model
    from edgedistill.models.teacher import build_teacher

    dataset = build_dataset(cfg.data.path, "val", None, val_path=cfg.data.val_path, img_size=cfg.data.img_size)
    count = min(cfg.pipeline.attention_images, len(dataset))
    picks = [int(i * len(dataset) / count) for i in range(count)]
    folder = paths.report / "attention_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in picks:
        image, _ = dataset[i]
        path = folder / f"val_{i:05d}.png"
        image.save(path)
        images.append(path)
    student = open_model(paths.student.path)
    teacher, _ = build_teacher(cfg.teacher, cfg.teacher_img_size)  # cfg: the pipeline's teacher
    attention_figure(student, teacher, images, out, temperature=cfg.distill.temperature)
    return True


def _plot_latency(paths: "PipelinePaths", out: Path) -> bool:
    if not paths.bench.exists():
        return False
    from edgedistill.bench.report import write_plot

    return write_plot(read_json(paths.bench), out)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_summary(console: Any, result: PipelineResult) -> None:
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
    console.print(table)
    console.print(f"report: {result['report']}", soft_wrap=True, highlight=False)
    for line in summary["trouble"]:
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    for line in summary["recommended"]:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
