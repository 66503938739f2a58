"""The ablation's table (markdown) and plot (k-NN against training time), from its cells.

A cell is one (variant, seed) result of ``benchmarks/ablation.py``: ``{"variant", "label",
"seed", "top1", "steps", "total_steps", "train_seconds", "clock", "wall_seconds",
"budget_reached", "img_s", "curve": [[train_seconds, top1], ...]}``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

__all__ = ["summarize", "verdict", "write_table", "write_plot"]

# (a, b, what a - b measures): the questions the table answers
COMPARISONS = (
    ("funmatch", "dino_scratch", "the recipe against DINO from scratch at equal cost"),
    ("funmatch", "attndistill", "what the recipe's changes add to AttnDistill as published"),
    ("funmatch", "cls_only", "what the attention term adds"),
    ("funmatch", "no_mix", "what mixing adds"),
    ("funmatch", "raw_target", "what the standardized target adds"),
    ("funmatch", "random_head", "what the least-squares projector start adds"),
    ("dense", "funmatch", "what the dense term adds"),
    ("attndistill", "dino_scratch", "AttnDistill as published against DINO from scratch"),
)


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant, in first-seen order: label, seeds, k-NN mean/std and the means of the rest."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault(cell["variant"], []).append(cell)
    out = {}
    for name, group in groups.items():
        top1 = [c["top1"] for c in group]
        out[name] = {
            "label": group[0]["label"], "settings": group[0].get("settings", ""), "seeds": [c["seed"] for c in group], "top1": top1,
            "mean": statistics.fmean(top1), "std": _std(top1),
            "steps": statistics.fmean(c["steps"] for c in group),
            "total_steps": statistics.fmean(c["total_steps"] for c in group),
            "cut": sum(bool(c["budget_reached"]) for c in group),
            "img_s": statistics.fmean(c["img_s"] for c in group),
            "seconds": statistics.fmean(c["train_seconds"] for c in group),
            "wall": statistics.fmean(c.get("wall_seconds", c["train_seconds"]) for c in group),
            "all_seconds": [c["train_seconds"] for c in group],
            "curves": [c.get("curve") or [[c["train_seconds"], c["top1"]]] for c in group],
        }
        peaks = [max(y for _, y in curve) for curve in out[name]["curves"]]
        out[name].update(peak=statistics.fmean(peaks), peak_std=_std(peaks))
    return out


def verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``a - b`` in points, and whether it clears the seed spread (mean ± std intervals apart)."""
    diff = a["mean"] - b["mean"]
    text = f"{diff:+.2f} points"
    if a["std"] is None or b["std"] is None:
        return f"{text} (one seed: no spread to judge by)"
    beyond = abs(diff) > _spread(a, b)
    return (f"{text}, seed std {a['std']:.2f} / {b['std']:.2f}: "
            f"{'beyond' if beyond else 'within'} the seed spread")


def _spread(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The sum of the two seed stds (0 for a single seed): mean ± std intervals further apart do not overlap."""
    return (a["std"] or 0.0) + (b["std"] or 0.0)


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def clock_words(header: dict[str, Any]) -> str:
    return "CPU seconds" if header.get("clock") == "cpu" else "wall-clock seconds"


def write_table(path: Path, header: dict[str, Any], cells: list[dict[str, Any]], refs: dict[str, Any]) -> str:
    """The markdown table with the references and the comparisons; returns the text."""
    rows = summarize(cells)
    cpu = header.get("clock") == "cpu"
    budget = f"{header['budget_s'] / 60:g} min of this machine per cell"
    if cpu:
        budget += f" ({header['clock_budget_s']:g} CPU seconds: training stops there, whatever else runs)"
    lines = [
        f"Data `{header['data']}`, teacher `{header['teacher']}`"
        f"{', student ' + header['student'] + ' for every variant' if header.get('student') else ''}, "
        f"{budget}, on {header['device']}"
        f"{', ' + header['date'] if header.get('date') else ''}. k-NN top-1 (%, k = 20, val split), "
        "mean ± std over seeds.",
        "",
        f"| variant | k-NN top-1 | best along the curve | seeds | steps (planned) | images per {'CPU ' if cpu else ''}s | "
        f"training ({'CPU ' if cpu else ''}s) | wall-clock (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows.values():
        cut = f", {row['cut']} cut at the budget" if row["cut"] else ""
        settings = f" ({row['settings']})" if row["settings"] else ""
        lines.append(f"| {row['label']}{settings} | {_fmt(row['mean'], row['std'])} | "
                     f"{_fmt(row['peak'], row['peak_std'])} | {len(row['seeds'])} | "
                     f"{row['steps']:.0f} ({row['total_steps']:.0f}{cut}) | {row['img_s']:.1f} | {row['seconds']:.0f} | "
                     f"{row['wall']:.0f} |")
    randoms = [v for k, v in refs.items() if k.startswith("random_student")]
    if "teacher" in refs:
        lines.append(f"| teacher (reference) | {refs['teacher']:.2f} | | | | | | |")
    if randoms:
        lines.append(f"| random-init student (reference) | {_fmt(statistics.fmean(randoms), _std(randoms))} | "
                     f"| {len(randoms)} | | | | |")
    if "pixels" in refs:
        lines.append(f"| raw pixels (reference) | {refs['pixels']:.2f} | | | | | | |")
    lines += ["", "k-NN top-1: at the end of the budget. Best along the curve: the highest k-NN any of the "
              "cell's measurements reached (what stopping at the right moment would have kept)."]
    lines += _against_random(rows, randoms)
    comparisons = [(a, b, what) for a, b, what in COMPARISONS if a in rows and b in rows]
    if comparisons:
        lines += ["", "Differences (beyond the seed spread: the two mean ± std intervals do not overlap):", ""]
        for a, b, what in comparisons:
            lines.append(f"- {rows[a]['label']} − {rows[b]['label']} ({what}): {verdict(rows[a], rows[b])}")
    if rows:
        best = max(rows.values(), key=lambda r: r["mean"])
        lines += ["", f"Highest mean k-NN: {best['label']} ({_fmt(best['mean'], best['std'])})."]
        if "teacher" in refs:
            lines.append(f"As a share of the teacher's k-NN: " + ", ".join(
                f"{r['label']} {100 * r['mean'] / refs['teacher']:.1f}%" for r in rows.values()) + ".")
    text = "\n".join(lines) + "\n"
    from edgedistill.utils import atomic_write_text

    atomic_write_text(path, text)
    return text


def _against_random(rows: dict[str, dict[str, Any]], randoms: list[float]) -> list[str]:
    """Each variant against the random-init student: a budget too short to learn shows here."""
    if not rows or not randoms:
        return []
    floor = {"mean": statistics.fmean(randoms), "std": _std(randoms)}
    lines = ["", "Against the random-init student:", ""]
    below = []
    for row in rows.values():
        lines.append(f"- {row['label']}: {verdict(row, floor)}")
        if row["mean"] - floor["mean"] <= _spread(row, floor):
            below.append(row["label"])
    one_seed = floor["std"] is None or any(row["std"] is None for row in rows.values())
    judged = "above it (one seed: no spread to judge by)" if one_seed else "beyond the seed spread"
    lines += ["", f"Every trained variant clears the random-init student, {judged}." if not below else
              f"Not clear of the random-init student ({judged}): {', '.join(below)}. A longer budget, or a "
              "cheaper evidence student, gives them more steps."]
    return lines


def write_plot(path: Path, header: dict[str, Any], cells: list[dict[str, Any]], refs: dict[str, Any]) -> None:
    """k-NN top-1 against training time: each seed's curve thin, the final mean ± std per
    variant as a point with its error bar; the references as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(cells)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(rows.values()):
        color = colors[i % len(colors)]
        for curve in row["curves"]:
            xs, ys = zip(*curve)
            ax.plot(xs, ys, color=color, alpha=0.35, linewidth=1, marker=".", markersize=3)
        ax.errorbar(row["seconds"], row["mean"], yerr=row["std"] or 0.0, fmt="o", color=color, capsize=4,
                    label=f"{row['label']}: {_fmt(row['mean'], row['std'])}")
    randoms = [v for k, v in refs.items() if k.startswith("random_student")]
    for key, value, style, name in (("teacher", refs.get("teacher"), "--", "teacher"),
                                    ("random", statistics.fmean(randoms) if randoms else None, ":", "random-init student"),
                                    ("pixels", refs.get("pixels"), "-.", "raw pixels")):
        if value is not None:
            ax.axhline(value, color="black" if key == "teacher" else "gray", linestyle=style, linewidth=1,
                       label=f"{name}: {value:.2f}")
    ax.set_xlabel(f"training time ({clock_words(header)})")
    ax.set_ylabel("k-NN top-1 (%, k = 20)")
    ax.set_title(f"{Path(str(header['data'])).name}: {header['budget_s'] / 60:g} min per cell, {header['device']}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
