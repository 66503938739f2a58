"""Our INT8 against what a user gets without edgedistill, in one `edgedistill bench` run.

    python benchmarks/int8_peers.py [--work runs/int8_peers] [--repeats 3] [--threads 2]

ViT-T/16 at 224 px (random init, seed 0; `bench_vit_t_224.py`'s student and CIFAR subset).
The bundle's variants are measured beside peers added to a copy of its manifest, so every row
runs in the same interleaved rounds, each in its own fresh process:

* ``peer_ort_fp32``: ONNX Runtime on the plain graph, defaults (what `onnx_fp32` is);
* ``peer_ort_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` on the plain graph, defaults;
* ``peer_nncf_default``: ``nncf.quantize`` with its defaults for a transformer (mixed preset),
  run at OpenVINO's default precision;

and, outside the bench, ``benchmark_app -hint latency`` on our OpenVINO INT8 IR (its median,
in the same minutes). Each peer's k-NN top-1 comes from the export gate's own pipeline
(``eval.features.knn_of``), so every row is judged by the same number. Printed: p50 per row
and repeat, the ratio to torch eager FP32, and the knn_delta.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vit_t_224 import make_student, make_subset, wait_for_quiet  # noqa: E402


def peers(bundle: Path, out: Path, calib_dir: Path, threads: int) -> dict:
    """A copy of the bundle with the peers' files and manifest entries (k-NN measured)."""
    import nncf
    import numpy as np
    import openvino as ov
    from onnxruntime.quantization import quantize_dynamic

    from edgedistill.data import eval_preprocessing
    from edgedistill.eval.features import InMemorySplit, TorchEmbedder, knn_of
    from edgedistill.export.images import labeled_pair, load_arrays, pick_indices
    from edgedistill.runtime import OnnxEmbedder, OpenVinoEmbedder
    from edgedistill.runtime.recommend import knn_delta
    from edgedistill.utils import cpu_has_native_bf16, sha256_file

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    quantize_dynamic(str(out / "onnx_fp32.onnx"), str(out / "peer_ort_dynamic.onnx"))
    spec = eval_preprocessing(manifest["input"]["shape"][-1])
    train, val = labeled_pair(str(calib_dir), spec)
    calib = load_arrays(train, pick_indices(len(train), 64, 0), spec)[0]
    model = nncf.quantize(ov.Core().read_model(str(out / "openvino_fp32.xml")),
                          nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]), model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(model, str(out / "peer_nncf_default.xml"), compress_to_fp16=False)

    bank, queries = InMemorySplit(train), InMemorySplit(val)
    knn = manifest["validation"]["knn"]
    reference = knn["torch_fp32"]["top1"]
    entries = {
        "peer_ort_fp32": ({"file": "onnx_fp32.onnx", "format": "onnx", "precision": "fp32"},
                          OnnxEmbedder(out / "onnx_fp32.onnx", threads=threads)),
        "peer_ort_dynamic": ({"file": "peer_ort_dynamic.onnx", "format": "onnx", "precision": "int8"},
                             OnnxEmbedder(out / "peer_ort_dynamic.onnx", threads=threads)),
        # OpenVINO's default precision: bf16 where the CPU has it natively
        "peer_nncf_default": ({"file": "peer_nncf_default.xml", "format": "openvino", "precision": "int8",
                               "weights_file": "peer_nncf_default.bin",
                               "inference_precision_hint": "bf16" if cpu_has_native_bf16() else "f32"},
                              OpenVinoEmbedder(out / "peer_nncf_default.xml", threads=threads, precision=None)),
    }
    for name, (entry, embedder) in entries.items():
        top1 = knn_of(embedder, bank, queries, num_classes=len(train.classes), progress=False)["top1"]
        entry["sha256"] = sha256_file(out / entry["file"])
        manifest["variants"][name] = entry
        knn["variants"][name] = {"top1": top1, "knn_delta": knn_delta(top1, reference), "passed": None}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def benchmark_app(xml: Path, threads: int, seconds: int, hint: str) -> float | None:
    """benchmark_app's median latency (ms) on ``xml`` at batch 1, or None without the tool.
    Its command line refuses ``-nthreads`` beside ``-hint latency``, so the thread count and
    precision go in a ``-load_config`` file, as our bench sets them."""
    import tempfile

    tool = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    if not Path(tool).exists():
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as config:
        json.dump({"CPU": {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
                           "INFERENCE_PRECISION_HINT": hint}}, config)
    try:
        done = subprocess.run([tool, "-m", str(xml), "-d", "CPU", "-hint", "latency", "-t", str(seconds),
                               "-load_config", config.name, "-shape", "[1,3,224,224]"],
                              capture_output=True, text=True, timeout=600)
    finally:
        Path(config.name).unlink()
    match = re.search(r"Median:\s+([\d.]+) ms", done.stdout)
    if match is None:
        print(f"benchmark_app failed: {(done.stdout + done.stderr).strip().splitlines()[-1:]}")
    return float(match.group(1)) if match else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "int8_peers")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-subset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--quiet", type=float, default=1.0)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"skipped: no labeled data at {args.data} (pass --data)")
        return 0

    from rich.console import Console

    from edgedistill.bench.report import render_table
    from edgedistill.bench.runner import run_bench
    from edgedistill.export import export_bundle

    work = args.work.resolve()
    make_student(work / "student")
    make_subset(args.data, work / "data", 100, 100)
    bundle = work / "export" / "vit_t_224"
    if not (bundle / "manifest.json").is_file():
        export_bundle(work / "student", out_root=work / "export", name=bundle.name, data=str(work / "data"),
                      calib_size=64, threads=args.threads, force=True)
    manifest = peers(bundle, work / "with_peers", work / "data", args.threads)
    con = Console(width=200)
    table: dict[str, list[float]] = {}
    app: list[float] = []
    for i in range(args.repeats):
        wait_for_quiet(args.quiet, 600)
        report = run_bench(work / "with_peers", threads=[args.threads], batches=[1], seconds=args.seconds,
                           rounds=args.rounds, console=Console(stderr=True))
        render_table(report, con)
        for row in report["rows"]:
            table.setdefault(row["id"], []).append(row["batches"]["1"]["latency_ratio"])
        hint = manifest["variants"]["openvino_int8"].get("inference_precision_hint", "f32")
        median = benchmark_app(work / "with_peers" / "openvino_int8.xml", args.threads, 10, hint)
        ours = next(r for r in report["rows"] if r["id"].startswith("openvino:openvino_int8:int8@" + hint))
        base = next(r for r in report["rows"] if r["baseline"])
        if median is not None:
            app.append(median / base["batches"]["1"]["p50_ms"])
            con.print(f"benchmark_app median {median:.2f} ms vs our openvino_int8 p50 "
                      f"{ours['batches']['1']['p50_ms']:.2f} ms (torch eager FP32 {base['batches']['1']['p50_ms']:.2f})")
    knn = manifest["validation"]["knn"]["variants"]
    print("\n| row | ratio to torch eager FP32, per repeat | median | knn_delta |\n| --- | --- | --- | --- |")
    for row, values in sorted(table.items(), key=lambda kv: statistics.median(kv[1])):
        variant = row.split(":")[1]
        delta = knn.get(variant, {}).get("knn_delta")
        print(f"| {row} | {', '.join(f'{v:.3f}' for v in values)} | {statistics.median(values):.3f} | "
              f"{'-' if delta is None else f'{delta:+.2f}'} |")
    if app:
        print(f"| benchmark_app -hint latency, openvino_int8 | {', '.join(f'{v:.3f}' for v in app)} | "
              f"{statistics.median(app):.3f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
