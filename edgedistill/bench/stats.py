"""Statistics of a benchmark: latency percentiles per row, the baseline per thread count,
speed-ups and latency ratios (also paired round by round), the best row per backend family
(``runtime.recommend``'s rule)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgedistill.bench.records import Baseline, BatchStats, ReportRow, Skip

if TYPE_CHECKING:
    from edgedistill.runtime.manifest import Manifest

__all__ = ["summarize_times", "baselines", "add_ratios", "best_rows", "knn_meta"]


def summarize_times(rounds: list[list[float]], batch: int) -> BatchStats:
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


def knn_meta(manifest: "Manifest") -> dict[str, Any] | None:
    knn = (manifest.validation or {}).get("knn") or {}
    if not knn or knn.get("skipped") or not knn.get("torch_fp32"):
        return None
    meta = {k: knn.get(k) for k in ("source", "train_images", "val_images", "classes", "k", "max_drop")}
    meta["torch_fp32_top1"] = knn["torch_fp32"].get("top1")
    return meta


def baselines(rows: list[ReportRow], threads: list[int], skipped: list[Skip]) -> list[Baseline]:
    """Per thread count: torch eager FP32, else the FP32 row of the first runtime in the
    registry's order that has one (ONNX Runtime's), else the first row."""
    from edgedistill.runtime import registry

    order = {name: i for i, name in enumerate(registry.backends())}
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
        fp32 = sorted((r for r in mine if r["precision"] == "fp32"), key=lambda r: order.get(r["backend"], len(order)))
        chosen = fp32[0] if fp32 else mine[0]
        label = chosen["label"] + ("" if chosen["precision"] in chosen["variant"] else f" {chosen['precision']}")
        out.append({"threads": t, "row": chosen["id"], "label": label,
                    "fallback_reason": f"torch eager fp32 unavailable: {why}"})
    return out


def add_ratios(rows: list[ReportRow], baselines: list[Baseline]) -> None:
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
                stats["speedup"] = _significant(ref_stats["p50_ms"] / stats["p50_ms"])
                stats["latency_ratio"] = _significant(stats["p50_ms"] / ref_stats["p50_ms"])
                # paired by round (both measured minutes apart at most): drift between rounds cancels
                paired = [a / b for a, b in zip(stats["round_p50_ms"], ref_stats["round_p50_ms"]) if b > 0]
                stats["latency_ratio_by_round"] = ({"median": _significant(float(np.median(paired))),
                                                    "min": _significant(min(paired)),
                                                    "max": _significant(max(paired))}
                                                   if paired else None)
            else:
                stats["speedup"] = stats["latency_ratio"] = stats["latency_ratio_by_round"] = None


def best_rows(rows: list[ReportRow], latency_batch: int, knn: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per backend family (a runtime, or an engine of it) except torch, the row to ship by
    ``runtime.recommend``'s rule: the fastest p50 at the latency batch whose k-NN is within the
    gate (``knn``: ``knn_meta``), among its rows at the most threads measured for it."""
    from edgedistill.runtime.recommend import Candidate, recommend, resolution
    from edgedistill.runtime.rows import precision_label

    ours = [r for r in rows if r["backend"] != "torch" and str(latency_batch) in r["batches"]]
    most = {r["engine"]: max(o["threads"] for o in ours if o["engine"] == r["engine"]) for r in ours}
    by_id = {r["id"]: r for r in ours}
    candidates = [Candidate(target=r["engine"], variant=r["variant"],
                            precision=precision_label(r["precision"], r["inference_precision"]),
                            ms=r["batches"][str(latency_batch)]["p50_ms"], top1=r["knn_top1"],
                            knn_delta=r["knn_delta"], key=r["id"],
                            fp32=r["precision"] == "fp32" and r["inference_precision"] in (None, "f32"))
                  for r in ours if r["threads"] == most[r["engine"]]]
    knn = knn or {}
    noise = resolution(knn.get("torch_fp32_top1"), knn.get("val_images"))
    best = {}
    for target, choice in recommend(candidates, float(knn.get("max_drop") or 1.0), noise,
                                    batch=latency_batch).items():
        row = by_id[choice.candidate.key]
        stats = row["batches"][str(latency_batch)]
        best[target] = {"row": row["id"], "variant": row["variant"], "precision": choice.candidate.precision,
                        "threads": row["threads"], "p50_ms": stats["p50_ms"], "speedup": stats.get("speedup"),
                        "knn_top1": row["knn_top1"], "knn_delta": row["knn_delta"], "reason": choice.reason}
    return best


def _significant(value: float, digits: int = 4) -> float:
    """Rounded to ``digits`` significant digits: a ratio of 0.02826 keeps its precision."""
    return float(f"{value:.{digits}g}")
