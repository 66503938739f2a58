"""Rendering a bench report: the rich table, JSON, CSV (one line per row and batch size) and
the latency-vs-k-NN plot (matplotlib, optional)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from edgedistill.errors import EdgeDistillError
from edgedistill.bench.records import BenchReport
from edgedistill.progress import print_table
from edgedistill.runtime.rows import precision_label

__all__ = ["render_table", "write_json", "write_csv", "write_plot", "plot_labels", "place_labels", "csv_lines",
           "CSV_COLUMNS", "check_plot_support", "describe_remote"]

CSV_COLUMNS = (
    "backend", "variant", "precision", "inference_precision", "device", "remote", "threads", "batch", "baseline",
    "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "round_spread",
    "throughput_ips", "speedup", "latency_ratio", "import_seconds", "load_seconds", "first_run_ms",
    "cold_start_seconds", "peak_rss_mb", "size_mb", "knn_top1", "knn_delta", "id",
)


def _mb(n: int | float | None) -> float | None:
    return None if n is None else round(n / 2**20, 2)


def csv_lines(report: BenchReport) -> list[dict[str, Any]]:
    """One dict per (row, batch size), with the CSV_COLUMNS keys."""
    lines = []
    for row in report["rows"]:
        for batch, stats in row["batches"].items():
            line = {k: row.get(k) for k in CSV_COLUMNS}
            line.update({k: stats.get(k) for k in CSV_COLUMNS if k in stats})
            line["batch"] = int(batch)
            line["size_mb"] = _mb(row.get("size_bytes"))
            lines.append(line)
    return lines


def write_csv(report: BenchReport, path: str | Path) -> None:
    """The CSV lines into ``path`` (``utils.write_output``: ``-`` is stdout, a device or pipe is
    written in place)."""
    from edgedistill.utils import write_output

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for line in csv_lines(report):
        writer.writerow({k: ("" if v is None else v) for k, v in line.items()})
    write_output(path, buffer.getvalue())


def write_json(report: BenchReport, path: str | Path) -> None:
    from edgedistill.utils import write_output

    write_output(path, json.dumps(report, indent=2) + "\n")


# ----------------------------------------------------------------------------- table


def _runtimes() -> tuple[Any, ...]:
    from edgedistill.runtime import registry

    return registry.RUNTIMES


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def render_table(report: BenchReport, console: Any) -> None:
    """One rich table per thread count: latency percentiles at the smallest batch, throughput
    at the others, speed-up against the baseline, cold start, memory, size, k-NN."""
    from rich.table import Table

    settings = report["settings"]
    batches = [str(b) for b in settings["batches"]]
    lat, others = batches[0], batches[1:]
    machine = report["machine"]
    for base in report["baselines"]:
        t = base["threads"]
        rows = [r for r in report["rows"] if r["threads"] == t]
        title = (f"{report['bundle']['name']} on {_places(report, rows)}, {t} thread"
                 f"{'s' if t != 1 else ''}")
        table = Table(title=title, title_justify="left")
        for name, justify in (("backend", "left"), ("variant", "left"), ("precision", "left"),
                              (f"p50 ms (b{lat})", "right"), ("p90", "right"), ("p99", "right"),
                              ("vs base", "right")):
            table.add_column(name, justify=justify)
        for b in others:
            table.add_column(f"img/s b{b}", justify="right")
        for name in ("session s", "peak MB", "size MB", "k-NN top-1"):
            table.add_column(name, justify="right")
        # the baseline, then the rows the export's gate validated, then the others (marked "-")
        for row in sorted(rows, key=lambda r: (not r["baseline"], r["knn_top1"] is None,
                                               r["batches"].get(lat, {}).get("p50_ms", 1e18))):
            stats = row["batches"].get(lat, {})
            precision = precision_label(row["precision"], row.get("inference_precision"))
            if row["baseline"]:
                ratio = "[bold]baseline[/]"
            elif stats.get("speedup"):
                ratio = f"{stats['speedup']:.2f}x ({stats['latency_ratio']:.2f})"
            else:
                ratio = "-"
            knn = "-" if row["knn_top1"] is None else (
                f"{row['knn_top1']:.2f}" + (f" ({row['knn_delta']:+.2f})" if row["knn_delta"] else ""))
            engine = row.get("engine", row["backend"]) + (f" ({row['remote']})" if row.get("remote") else "")
            cells = [engine, row["variant"], precision, _f(stats.get("p50_ms")), _f(stats.get("p90_ms")),
                     _f(stats.get("p99_ms")), ratio]
            for b in others:
                s = row["batches"].get(b, {})
                cells.append(_f(s.get("throughput_ips"), "{:.1f}") +
                             (f" ({s['speedup']:.2f}x)" if s.get("speedup") and not row["baseline"] else ""))
            cells += [_f(row.get("load_seconds"), "{:.2f}"), _f(row.get("peak_rss_mb"), "{:.0f}"),
                      _f(_mb(row.get("size_bytes")), "{:.1f}"), knn]
            table.add_row(*cells, style="bold" if row["baseline"] else None)
        caption = [f"baseline: {base['label']}" + (f" ({base['fallback_reason']})" if base["fallback_reason"] else
                                                  ", torch.inference_mode, same threads"),
                   "vs base: speed-up (latency ratio) of the p50; img/s from the p50 at that batch (speed-up)",
                   f"session s: session creation / compile; peak MB: worker RSS serving batch {lat}",
                   "k-NN top-1 (knn_delta): the export's gate figure and the variant's minus torch FP32's, in "
                   "points; -: not validated (no gate figure for this path), listed after the validated rows"]
        caption += _round_spread(rows, lat, settings)
        caption += [f"{r.name}: {r.report_note}" for r in _runtimes() if r.report_note
                    and any(row["backend"] == r.name for row in rows)]
        per_call = sorted({row["variant"] for row in rows if (row.get("settings") or {}).get("images_per_call")})
        if per_call and others:
            caption.append(f"{', '.join(per_call)}: one image per call, as the manifest's batch says (dynamic INT8's "
                           "outputs depend on the batch): img/s at a larger batch is that many calls")
        table.caption = "\n".join(caption)
        table.caption_justify = "left"
        print_table(console, table, keys=3)  # backend, variant, precision: in every part when it is split
    simd = ", ".join(machine.get("simd") or []) or "-"
    # notes one line each (soft_wrap): a log's reader wraps them, never mid-sentence
    console.print(f"machine: {machine['cpu']}, {machine.get('physical_cores') or '?'} cores / "
                  f"{machine.get('usable_cpus')} usable CPUs, {machine.get('memory_gb')} GB; SIMD: {simd}", soft_wrap=True)
    versions = machine.get("versions", {})
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v), soft_wrap=True)
    for label, remote in (report.get("remotes") or {}).items():
        console.print(f"device {label}: {describe_remote(remote)}", soft_wrap=True)
    grouped: dict[tuple[str, str], list[str]] = {}
    for skip in report["skipped"]:
        what = f"{skip['variant']} {skip['precision']}" if skip["backend"] != "torch" else f"eager {skip['precision']}"
        if what not in grouped.setdefault((skip["backend"], skip["reason"]), []):
            grouped[(skip["backend"], skip["reason"])].append(what)
    for (backend, reason), what in grouped.items():
        console.print(f"[yellow]skipped[/] {backend} {', '.join(what)}: {reason}", soft_wrap=True)
    for row in report["rows"]:
        for batch, reason in (row.get("failed_batches") or {}).items():
            console.print(f"[yellow]failed[/] {row['backend']} {row['variant']} {row['precision']} at batch {batch} "
                          f"(its other batches stand): {reason}", soft_wrap=True)
    for note in report.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    for line in recommended_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def recommended_lines(report: BenchReport) -> list[str]:
    """One ``Recommended for <backend>: ...`` line per backend family (the report's ``best``)."""
    from edgedistill.runtime import registry
    from edgedistill.runtime.recommend import Candidate, Choice, recommend_line

    labels = {r.name: r.label for r in registry.RUNTIMES}
    lines = []
    for target, best in report.get("best", {}).items():
        candidate = Candidate(target=target, variant=best["variant"], precision=best["precision"],
                              ms=best["p50_ms"], top1=best["knn_top1"], knn_delta=best["knn_delta"])
        label = labels.get(target, target) + f", {best['threads']} thread{'s' if best['threads'] != 1 else ''}"
        lines.append(recommend_line(Choice(candidate, best["reason"]), label))
    return lines


def _round_spread(rows: list[Any], lat: str, settings: dict[str, Any]) -> list[str]:
    """The caption line on the rounds: how many, how long, and how far the p50 of one round
    strayed from the row's p50 ((max - min) / p50 of the rounds' medians) in this run."""
    spreads = sorted((row["batches"][lat]["round_spread"], row["label"]) for row in rows
                     if (row["batches"].get(lat) or {}).get("round_spread") is not None)
    if not spreads:
        return []
    per_round = settings.get("per_round") or {}
    size = f"{per_round['seconds']:g} s" if "seconds" in per_round else f"{per_round.get('runs', '?')} runs"
    median = spreads[len(spreads) // 2][0]
    return [f"rounds: {settings['rounds']} x {size} per row, interleaved; p50 spread across rounds "
            f"(max - min) / p50: median {median:.0%}, at most {spreads[-1][0]:.0%} ({spreads[-1][1]})"]


def _places(report: BenchReport, rows: list[Any]) -> str:
    """Where a table's rows ran: this machine (its CPU and --device) and each SSH device."""
    machine, remotes = report["machine"], report.get("remotes") or {}
    here = [r for r in rows if not r.get("remote")]
    local = [d for d in report["settings"].get("device", "cpu").split(",") if not d.startswith("ssh://")]
    places = [f"{machine['cpu']} ({','.join(local)})"] if here or not remotes else []
    for label in dict.fromkeys(r["remote"] for r in rows if r.get("remote")):
        places.append(f"{label} ({remotes.get(label, {}).get('cpu') or '?'})")
    return " and ".join(places)


def describe_remote(remote: dict[str, Any]) -> str:
    """An SSH device in one line: arch, CPU, cores, memory, OS, Python and library versions."""
    cpus = f"{remote.get('usable_cpus') or '?'} usable CPUs"
    memory = f", {remote['memory_gb']} GB" if remote.get("memory_gb") else ""
    versions = ", ".join(f"{k} {v}" for k, v in (remote.get("versions") or {}).items())
    return (f"{remote.get('arch')}, {remote.get('cpu')}, {cpus}{memory}, {remote.get('os')}; "
            f"Python {remote.get('python')} ({remote.get('python_path')}); {versions or 'no runtime'}")


# ----------------------------------------------------------------------------- plot


def check_plot_support() -> None:
    """Raise a one-line error when matplotlib is missing (before any measuring)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EdgeDistillError("--plot needs matplotlib: pip install matplotlib (or 'edgedistill[plot]')") from None


def plot_labels(points: list[tuple[float, float, str]], near: float = 0.04) -> list[tuple[float, float, str]]:
    """One label per group of points that would print on top of each other (within ``near``
    of the plot's width and height): ``(x, y, "tag1, tag2")`` at the group's first point.
    Rows often coincide: the same model at two thread counts, fp32 and its f32 fallback."""
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or abs(xs[0]) or 1.0, (max(ys) - min(ys)) or abs(ys[0]) or 1.0
    groups: list[tuple[float, float, list[str]]] = []
    for x, y, tag in points:
        for gx, gy, tags in groups:
            if abs(x - gx) <= near * span_x and abs(y - gy) <= near * span_y:
                if tag not in tags:
                    tags.append(tag)
                break
        else:
            groups.append((x, y, [tag]))
    return [(x, y, ", ".join(tags)) for x, y, tags in groups]


def _overlaps(box: Any, boxes: list[Any]) -> bool:
    return any(box.x0 < b.x1 and b.x0 < box.x1 and box.y0 < b.y1 and b.y0 < box.y1 for b in boxes)


def place_labels(ax: Any, labels: list[tuple[float, float, str]], fontsize: float = 7) -> list[Any]:
    """Annotate each ``(x, y, text)`` beside its point where its text overlaps no label placed
    before it: right of the point, then above and below it in growing steps, then left of it.
    Returns the annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    step = fontsize * 1.4  # one text line, in points
    tries = [(5, 4 + sign * k * step, "left") for k in range(12) for sign in ((1, -1) if k else (1,))]
    tries += [(-5, 4 + sign * k * step, "right") for k in range(12) for sign in ((1, -1) if k else (1,))]
    placed: list[Any] = []
    annotations = []
    for x, y, text in sorted(labels, key=lambda item: (item[1], item[0])):
        for dx, dy, align in tries:
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                               ha=align, va="bottom")
            box = note.get_window_extent(renderer)
            if not _overlaps(box, placed):
                break
            note.remove()
        else:  # nowhere free: keep the first place (a crowded plot; the table has every figure)
            dx, dy, align = tries[0]
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize, ha=align,
                               va="bottom")
            box = note.get_window_extent(renderer)
        placed.append(box)
        annotations.append(note)
    return annotations


def write_plot(report: BenchReport, path: str | Path) -> bool:
    """Latency (p50 at the smallest batch) against k-NN top-1 of every row whose accuracy the
    export measured. Returns False (nothing written) when the manifest has no k-NN figures."""
    check_plot_support()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgedistill.utils import write_output

    lat = str(report["settings"]["batches"][0])
    points = [r for r in report["rows"] if r["knn_top1"] is not None and lat in r["batches"]]
    if not points:
        return False
    markers = {"torch": "o", **{r.name: r.marker for r in _runtimes()}}
    colors = {"fp32": "tab:blue", "bf16": "tab:purple", "fp16": "tab:green", "int8": "tab:orange"}
    threads = sorted({r["threads"] for r in points})
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    seen: set[tuple[str, str]] = set()
    tagged: list[tuple[float, float, str]] = []
    for row in points:
        x, y = row["batches"][lat]["p50_ms"], row["knn_top1"]
        key = (row["backend"], row["precision"])
        ax.scatter([x], [y], marker=markers.get(row["backend"], "o"), s=60,
                   color=colors.get(row["precision"], "tab:gray"), edgecolors="black" if row["baseline"] else "none",
                   label=f"{row['backend']} {row['precision']}" if key not in seen else None, zorder=3)
        seen.add(key)
        tag = row["variant"] if row["backend"] != "torch" else "torch"
        if row.get("inference_precision") and row["backend"] != "torch":
            tag += f"@{row['inference_precision']}"
        if row.get("engine", row["backend"]) != row["backend"]:  # an engine of the runtime (wasm, webgpu)
            tag += f" ({row['device']})"
        if len(threads) > 1:
            tag += f" {row['threads']}t"
        if row.get("remote"):
            tag += f" @{row['remote']}"
        tagged.append((x, y, tag))
    knn = report["bundle"].get("knn") or {}
    if knn.get("torch_fp32_top1") is not None and knn.get("max_drop") is not None:
        ax.axhline(knn["torch_fp32_top1"] - knn["max_drop"], color="gray", linestyle="--", linewidth=1,
                   label=f"accuracy gate (torch fp32 - {knn['max_drop']:g} pt)")
    ax.set_xlabel(f"p50 latency at batch {lat} (ms, lower is better)")
    ax.set_ylabel(f"k-NN top-1 (%, k={knn.get('k', 20)})")
    where = _places(report, points) if report.get("remotes") else report["machine"]["cpu"]
    ax.set_title(f"{report['bundle']['name']}: latency vs k-NN accuracy\n{where}, "
                 f"threads {','.join(map(str, threads))}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    place_labels(ax, plot_labels(tagged))  # after the layout: the places are measured on the final axes
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_output(path, buffer.getvalue())
    return True
