"""Edge targets on a ViT-T/16 at 224 px, batch 1, in one run: the browser (onnxruntime-web
WASM at 1 and 2 threads) against native ONNX Runtime at the same threads, and ExecuTorch
XNNPACK FP32 and INT8 against torch eager FP32; the INT8 program's parity cosine and knn_delta
from its export gates.

Steps (the export is reused when done, unless --force-export):

1. the random-init ViT-T/16 student and the CIFAR-10 subset upsampled to 224 px (1000 bank /
   1000 val images) of ``bench_vit_t_224.py``;
2. ``export_bundle`` with ``--formats onnx,executorch`` (ONNX FP32 + INT8, ExecuTorch FP32 +
   PT2E INT8), both gates;
3. one ``run_bench(device="browser")`` at threads 1 and 2, batch 1: torch eager FP32, ONNX
   Runtime, ExecuTorch and onnxruntime-web WASM rows, interleaved round by round.

Usage: python benchmarks/edge_vit_t_224.py [--work runs/edge_vit_t_224] [--seconds 6] [--rounds 6]
       [--data ../shared/data/cifar10-subset] [--quiet 2.0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def note(report: dict, manifest: dict) -> dict:
    """The figures the note reports, from one bench report and the bundle's gates."""
    rows = {r["id"]: r for r in report["rows"]}

    def p50(rid: str) -> float | None:
        row = rows.get(rid)
        return row["batches"]["1"]["p50_ms"] if row else None

    out: dict = {"load_average": [report["machine"]["load_average"], report["machine"].get("load_average_after")]}
    for t in (1, 2):
        for v in ("fp32", "int8"):
            web, native = p50(f"onnxruntime-web/wasm:onnx_{v}:{v}:{t}t"), p50(f"onnxruntime:onnx_{v}:{v}:{t}t")
            out[f"onnx_{v}_{t}t"] = {"browser_wasm_p50_ms": web, "native_ort_p50_ms": native,
                                     "browser_over_native": round(web / native, 3) if web and native else None}
        torch = p50(f"torch:student:fp32:{t}t")
        out[f"executorch_{t}t"] = {"torch_eager_fp32_p50_ms": torch, **{
            f"executorch_{v}_p50_ms": p50(f"executorch:executorch_{v}:{v}:{t}t") for v in ("fp32", "int8")}}
        for v in ("fp32", "int8"):
            mine = out[f"executorch_{t}t"][f"executorch_{v}_p50_ms"]
            out[f"executorch_{t}t"][f"executorch_{v}_over_torch"] = round(mine / torch, 3) if mine and torch else None
    validation = manifest["validation"]
    out["executorch_int8_gates"] = {
        "parity_min_cosine": validation["parity"]["variants"]["executorch_int8"]["min_cosine"],
        "parity_mean_cosine_batch_1": validation["parity"]["variants"]["executorch_int8"]["outputs"]["embedding"][
            "batch_1"]["mean_cosine"],
        "knn_top1": validation["knn"]["variants"]["executorch_int8"]["top1"],
        "torch_fp32_top1": validation["knn"]["torch_fp32"]["top1"],
        "knn_delta": validation["knn"]["variants"]["executorch_int8"]["knn_delta"]}
    out["onnx_int8_knn_delta"] = validation["knn"]["variants"]["onnx_int8"]["knn_delta"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "edge_vit_t_224")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-subset")
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--force-export", action="store_true")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per row, over all rounds")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--quiet", type=float, default=2.0, help="wait for this 1-min load average first (0: no)")
    parser.add_argument("--max-wait", type=float, default=300.0)
    args = parser.parse_args()

    from bench_vit_t_224 import ensure_bundle, wait_for_quiet
    from rich.console import Console

    from edgedistill.bench.report import render_table, write_json, write_plot
    from edgedistill.bench.runner import run_bench
    from edgedistill.utils import read_json

    work = args.work.resolve()
    bundle = ensure_bundle(args, work, "vit_t_224_edge", formats="onnx,executorch", threads=2)
    if bundle is None:
        return 0
    wait_for_quiet(args.quiet, args.max_wait)
    report = run_bench(bundle, device="browser", backends="torch,onnxruntime,executorch,onnxruntime-web",
                       precisions="fp32,int8", threads=[1, 2], batches=[1], seconds=args.seconds, rounds=args.rounds,
                       console=Console(stderr=True))
    render_table(report, Console(width=200))
    write_json(report, work / "bench_edge.json")
    write_plot(report, work / "latency_vs_knn.png")
    figures = note(report, read_json(bundle / "manifest.json"))
    (work / "note.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
