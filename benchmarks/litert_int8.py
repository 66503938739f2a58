"""LiteRT INT8 at 224 px, batch 1: dynamic-range against full-integer quantization, both against
LiteRT FP32 measured in the same run, to choose what ``export --formats litert --int8`` ships
(targets: INT8 p50 <= 0.6x LiteRT FP32, INT8 k-NN within 1 point of FP32).

Steps (reused when already done in --work, unless --force-export):

1. the bench_vit_t_224.py student (ViT-T/16 224, random init, seed 0) and a per-class subset of
   the CIFAR-10 subset;
2. ``export_bundle --formats litert --int8``: ``litert_fp32`` (litert-torch) and ``litert_int8``
   (ai-edge-quantizer, dynamic range), through the export's gates;
3. the full-integer variant (``static_wi8_ai8``, calibrated on the export's 64 calibration
   images, the run's data through the manifest's preprocessing) added to the bundle as
   ``litert_int8_full``;
4. k-NN top-1 of the three (``eval knn``'s path: the LiteRT interpreter, batch 1 invocations),
   and ``run_bench`` --repeats times at batch 1 (fresh processes, interleaved rounds): each
   INT8 p50 over FP32's, also paired round by round.

Random weights keep the k-NN figures low (about 23% top-1) but they measure what the gate
measures, the INT8 models' drift from FP32; latency does not depend on the weights' values.

Usage: python benchmarks/litert_int8.py [--work runs/litert_int8] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vit_t_224 import make_student, make_subset, wait_for_quiet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FULL = "litert_int8_full"
TARGET_RATIO, TARGET_DROP = 0.6, 1.0


def ensure_bundle(args: argparse.Namespace, work: Path) -> Path:
    from edgedistill.export import export_bundle

    bundle = work / "export" / "vit_t_224_litert"
    if args.force_export or not (bundle / "manifest.json").is_file():
        make_student(work / "student")
        make_subset(args.data, work / "data", args.train_per_class, args.val_per_class)
        export_bundle(work / "student", out_root=work / "export", name=bundle.name, formats="litert",
                      data=str(work / "data"), calib_size=64, threads=args.threads, force=True)
    return bundle


def add_full_integer(bundle: Path, work: Path) -> None:
    """The full-integer model, calibrated on the export's calibration images, as one more
    variant of the bundle (its manifest rewritten, validated as any reader validates it)."""
    from edgedistill.export.images import load_arrays, open_split, pick_indices
    from edgedistill.runtime.litert.build import quantize_litert
    from edgedistill.runtime.manifest import read_manifest, validate_manifest
    from edgedistill.utils import atomic_write_json, sha256_file

    manifest = read_manifest(bundle)
    if FULL in manifest.variants:
        return
    spec = manifest.preprocessing.spec
    calib = open_split(str(work / "data"), "train", spec, scan=False)
    images, _ = load_arrays(calib, pick_indices(len(calib), 64, 0), spec)  # the export's own choice of images
    path = bundle / f"{FULL}.tflite"
    settings = quantize_litert(bundle / "litert_fp32.tflite", path, scheme="full_integer", images=images)
    data = manifest.as_json()
    entry = dict(data["variants"]["litert_int8"], file=path.name, sha256=sha256_file(path),
                 size_bytes=path.stat().st_size, total_size_bytes=path.stat().st_size,
                 quantization=dict(settings, calibration={"source": str(work / "data"), "images": len(images)}))
    data["variants"][FULL] = entry
    atomic_write_json(bundle / "manifest.json", validate_manifest(data).as_json())


def knn(bundle: Path, work: Path, threads: int) -> dict[str, float]:
    from edgedistill.eval.evaluate import evaluate_knn, load_splits
    from edgedistill.eval.models import open_model

    splits = load_splits(data=str(work / "data"))
    return {variant: evaluate_knn(open_model(str(bundle), variant=variant, threads=threads), splits, num_workers=0,
                                  progress=False)["top1"]
            for variant in ("litert_fp32", "litert_int8", FULL)}


def ratios(report: dict) -> dict[str, dict[str, float]]:
    """Each INT8 row's p50 over LiteRT FP32's, overall and paired round by round (median)."""
    rows = {r["variant"]: r["batches"]["1"] for r in report["rows"] if r["backend"] == "litert"}
    fp32 = rows["litert_fp32"]
    return {v: {"p50_ms": s["p50_ms"], "ratio": round(s["p50_ms"] / fp32["p50_ms"], 4),
                "ratio_by_round": round(statistics.median(a / b for a, b in zip(s["round_p50_ms"], fp32["round_p50_ms"])),
                                        4)}
            for v, s in rows.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "litert_int8")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-subset")
    parser.add_argument("--train-per-class", type=int, default=50)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--force-export", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per row, per repeat")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quiet", type=float, default=1.5, help="wait for a 1-min load average at most this")
    parser.add_argument("--max-wait", type=float, default=300.0)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"skipped: the labeled data is not at {args.data} (pass --data)")
        return 0

    from rich.console import Console

    from edgedistill.bench.report import render_table
    from edgedistill.bench.runner import run_bench

    con = Console(width=None if sys.stdout.isatty() else 200)
    work = args.work.resolve()
    bundle = ensure_bundle(args, work)
    add_full_integer(bundle, work)
    top1 = knn(bundle, work, args.threads)
    con.print("k-NN top-1: " + ", ".join(f"{v} {t:.2f}" for v, t in top1.items()))
    repeats = []
    for i in range(args.repeats):
        wait_for_quiet(args.quiet, args.max_wait)
        report = run_bench(bundle, backends="litert", threads=[args.threads], batches=[1], seconds=args.seconds,
                           rounds=args.rounds, console=Console(stderr=True))
        render_table(report, con)
        repeats.append(ratios(report))
    summary = {"threads": args.threads, "targets": {"ratio": TARGET_RATIO, "max_knn_drop": TARGET_DROP},
               "knn_top1": top1, "repeats": repeats, "variants": {}}
    for variant in ("litert_int8", FULL):
        values = [r[variant]["ratio_by_round"] for r in repeats]
        delta = round(top1[variant] - top1["litert_fp32"], 4)  # knn_delta against LiteRT FP32
        summary["variants"][variant] = {"ratio_median": statistics.median(values), "ratio_min": min(values),
                                        "ratio_max": max(values), "knn_delta": delta,
                                        "meets_targets": statistics.median(values) <= TARGET_RATIO and delta >= -TARGET_DROP}
        con.print(f"{variant}: p50 / LiteRT FP32 median {statistics.median(values):.3f} (min {min(values):.3f}, "
                  f"max {max(values):.3f}); k-NN {top1[variant]:.2f} vs {top1['litert_fp32']:.2f} (knn_delta {delta:+.2f})")
    (work / "litert_int8.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
