"""``edgedistill bench``: a tiny exported bundle measured without torch (the baseline falls back
to ONNX Runtime FP32) and with it (torch eager FP32), the report's JSON/CSV/plot, the worker
protocol, and one-line errors for unavailable devices and bad bundles. No timed assertions."""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image_folder, run_cli
from edgedistill.errors import EdgeDistillError

ARCH = "vit_tiny_patch16_224"


@pytest.fixture(scope="session")
def bench_bundle(tiny_bundle) -> Path:
    """conftest's tiny bundle: a 16 px, patch 4, 2-block student with every variant and both gates."""
    return Path(tiny_bundle["bundle"])


@pytest.fixture(scope="session")
def torch_blocked(tmp_path_factory) -> dict[str, str]:
    """An environment in which ``import torch`` raises ImportError, in this process's children
    and their children (PYTHONPATH is inherited by the bench workers)."""
    shadow = tmp_path_factory.mktemp("no_torch")
    (shadow / "torch").mkdir()
    (shadow / "torch" / "__init__.py").write_text('raise ImportError("torch is blocked for this test")\n')
    paths = [str(shadow), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def one_line_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


# ----------------------------------------------------------------------------- without torch


def test_bench_without_torch_writes_report(bench_bundle, torch_blocked, tmp_path):
    from edgedistill.bench.plan import PRECISIONS, plan_rows
    from edgedistill.bench.report import CSV_COLUMNS
    from edgedistill.runtime import read_manifest
    from edgedistill.runtime.rows import precision_label
    from edgedistill.utils import cpu_has_native_bf16

    out = {k: tmp_path / f"report.{k}" for k in ("json", "csv", "png")}
    run = run_cli("bench", "--bundle", str(bench_bundle), "--threads", "1", "--batch", "1,2", "--runs", "6",
                  "--rounds", "2", "--warmup", "1", "--json", str(out["json"]), "--csv", str(out["csv"]),
                  "--plot", str(out["png"]), "--no-progress", env=torch_blocked, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out["json"].read_text())

    # the torch rows were tried, failed on the shadow (in the worker), and the table says so
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in report["skipped"]}
    assert "torch is blocked for this test" in reasons[("torch", "fp32")]
    (base,) = report["baselines"]
    assert base["threads"] == 1 and base["row"] == "onnxruntime:onnx_fp32:fp32:1t"
    assert "torch eager fp32 unavailable" in base["fallback_reason"]
    assert "torch eager fp32 unavailable" in run.stdout and "baseline" in run.stdout

    rows = {r["id"]: r for r in report["rows"]}
    # the plain graph's INT8 has standard operators, so OpenVINO runs it too; the fused graph's not
    variants = json.loads((bench_bundle / "manifest.json").read_text())["variants"]
    assert variants["onnx_int8"]["runtimes"] == ["onnxruntime", "openvino", "onnxruntime-web"]
    assert variants["onnx_fused_fp32"]["runtimes"] == variants["onnx_fused_int8"]["runtimes"] == ["onnxruntime"]
    assert {i for i in rows if "bf16" not in i} == {
        "onnxruntime:onnx_fp32:fp32:1t", "onnxruntime:onnx_fused_fp32:fp32:1t", "onnxruntime:onnx_int8:int8:1t",
        "onnxruntime:onnx_fused_int8:int8:1t", "openvino:openvino_fp32:fp32@f32:1t",
        "openvino:openvino_fp16:fp16@f32:1t", "openvino:openvino_int8:int8@f32:1t", "openvino:onnx_int8:int8@f32:1t"}
    # the bf16 rows depend on the CPU (test_bench_plan.py pins that rule on CPUs with and without
    # bf16): every row the planner gives this machine was measured, and no other
    planned, _ = plan_rows(read_manifest(bench_bundle), bench_bundle, backends=["onnxruntime", "openvino"],
                           precisions=PRECISIONS, threads=[1], targets={"onnxruntime": "CPUExecutionProvider",
                                                                        "openvino": "CPU"},
                           reasons={}, native_bf16=cpu_has_native_bf16())
    assert set(rows) == {r.id for r in planned}
    assert not any(r["backend"] == "torch" for r in report["rows"])
    for row in rows.values():
        assert set(row["batches"]) == {"1", "2"}
        for batch, stats in row["batches"].items():
            assert stats["runs"] == 6 and len(stats["round_p50_ms"]) == 2
            assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
            assert stats["throughput_ips"] == pytest.approx(int(batch) * 1000 / stats["p50_ms"], rel=1e-3)
            assert stats["speedup"] * stats["latency_ratio"] == pytest.approx(1.0, rel=1e-3)
            by_round = stats["latency_ratio_by_round"]
            assert by_round["min"] <= by_round["median"] <= by_round["max"]
        assert row["load_seconds"] > 0 and row["first_run_ms"] > 0 and row["peak_rss_mb"] > 10
        assert row["size_bytes"] > 0 and row["output_shape"] == [1, 192] and row["threads"] == 1
    # dynamic INT8 runs one image per call (its manifest batch), whichever runtime runs it
    assert rows["onnxruntime:onnx_int8:int8:1t"]["settings"]["images_per_call"] == 1
    assert rows["openvino:onnx_int8:int8@f32:1t"]["settings"]["images_per_call"] == 1
    assert "images_per_call" not in rows["onnxruntime:onnx_fp32:fp32:1t"]["settings"]
    assert "onnx_fused_int8, onnx_int8: one image per call" in " ".join(run.stdout.split())
    baseline = rows["onnxruntime:onnx_fp32:fp32:1t"]
    assert baseline["baseline"] and baseline["batches"]["1"]["speedup"] == 1.0
    assert sum(r["baseline"] for r in rows.values()) == 1

    # threads and precision were set explicitly, and read back where the runtime tells
    assert baseline["settings"]["intra_op_num_threads"] == 1 and baseline["settings"]["inter_op_num_threads"] == 1
    ov_fp32 = rows["openvino:openvino_fp32:fp32@f32:1t"]["settings"]
    assert ov_fp32["properties"]["INFERENCE_NUM_THREADS"] == 1
    assert ov_fp32["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert ov_fp32["compiled_properties"]["INFERENCE_PRECISION_HINT"] == "f32"

    # k-NN figures only where the export's accuracy gate measured exactly that path
    validation = json.loads((bench_bundle / "manifest.json").read_text())["validation"]["knn"]["variants"]
    assert rows["onnxruntime:onnx_int8:int8:1t"]["knn_top1"] == validation["onnx_int8"]["top1"]
    assert rows["openvino:openvino_fp32:fp32@f32:1t"]["knn_top1"] == validation["openvino_fp32"]["top1"]
    int8_bf16, int8_f32 = rows.get("openvino:openvino_int8:int8@bf16:1t"), rows["openvino:openvino_int8:int8@f32:1t"]
    if cpu_has_native_bf16():  # the export recorded a bf16 hint and gated it, and its f32 fallback too
        assert int8_bf16["knn_delta"] == validation["openvino_int8"]["knn_delta"]
        assert int8_f32["knn_delta"] == validation["openvino_int8"]["f32_fallback"]["knn_delta"]
        assert int8_bf16["settings"]["compiled_properties"]["INFERENCE_PRECISION_HINT"] == "bf16"
        assert int8_f32["settings"]["compiled_properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    else:
        assert int8_bf16 is None and int8_f32["knn_delta"] == validation["openvino_int8"]["knn_delta"]

    machine = report["machine"]
    assert machine["cpu"] and machine["usable_cpus"] >= 1 and isinstance(machine["simd"], list)
    assert machine["versions"]["onnxruntime"] and "CPUExecutionProvider" in machine["devices"]["onnxruntime"]
    assert report["settings"]["threads"] == [1] and report["settings"]["batches"] == [1, 2]
    # the variant to ship per backend: the fastest within the gate, printed at the end
    best = report["best"]
    assert set(best) == {"onnxruntime", "openvino"}
    for target, choice in best.items():
        within = [r for r in rows.values() if r["engine"] == target and r["knn_delta"] is not None
                  and r["knn_delta"] >= -1.0]
        assert choice["row"] in {r["id"] for r in within}
        assert choice["p50_ms"] <= 1.05 * min(r["batches"]["1"]["p50_ms"] for r in within)
        label = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[target]
        assert f"Recommended for {label}, 1 thread: {choice['variant']} ({choice['precision']}; " in run.stdout
    # rows without a gate figure come after the validated ones in the table
    by_cells = {(r["engine"], r["variant"], precision_label(r["precision"], r["inference_precision"])): r
                for r in rows.values()}
    # (a table wider than the terminal prints in parts, each repeating these columns: first sight counts)
    cells = list(dict.fromkeys(tuple(c.strip() for c in line.split("│")[1:4])
                               for line in run.stdout.splitlines() if line.count("│") > 5))
    unvalidated = [by_cells[c]["knn_top1"] is None for c in cells if c in by_cells]
    assert len(unvalidated) == len(rows) and unvalidated == sorted(unvalidated)
    assert any(unvalidated) or not cpu_has_native_bf16()  # openvino fp32@bf16 has no gate figure

    with open(out["csv"], newline="") as handle:
        reader = csv.DictReader(handle)
        lines = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert len(lines) == 2 * len(rows)
    assert {(ln["id"], ln["batch"]) for ln in lines} == {(r, b) for r in rows for b in ("1", "2")}
    for line in lines:  # the same knn_delta, same sign, as the manifest and the JSON
        assert line["knn_delta"] == ("" if rows[line["id"]]["knn_delta"] is None else str(rows[line["id"]]["knn_delta"]))
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- with torch


def test_bench_torch_baseline_from_the_run_directory(bench_bundle):
    from edgedistill.bench.runner import run_bench

    report = run_bench(bench_bundle, backends="torch,onnxruntime", precisions="fp32,int8", threads=[1], batches=[1],
                       seconds=0.2, rounds=2, warmup=1, progress=False)
    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) == {"torch:student:fp32:1t", "onnxruntime:onnx_fp32:fp32:1t", "onnxruntime:onnx_fused_fp32:fp32:1t",
                         "onnxruntime:onnx_int8:int8:1t", "onnxruntime:onnx_fused_int8:int8:1t"}
    torch_row = rows["torch:student:fp32:1t"]
    assert torch_row["baseline"] and report["baselines"][0]["fallback_reason"] is None
    assert torch_row["settings"]["torch.set_num_threads"] == 1 and torch_row["settings"]["num_threads_read_back"] == 1
    assert torch_row["output_shape"] == [1, 192] and torch_row["batches"]["1"]["runs"] >= 2
    knn = json.loads((bench_bundle / "manifest.json").read_text())["validation"]["knn"]
    assert torch_row["knn_top1"] == knn["torch_fp32"]["top1"]
    ratio = rows["onnxruntime:onnx_int8:int8:1t"]["batches"]["1"]["latency_ratio"]
    assert ratio == pytest.approx(rows["onnxruntime:onnx_int8:int8:1t"]["batches"]["1"]["p50_ms"]
                                  / torch_row["batches"]["1"]["p50_ms"], rel=1e-3)


def test_student_weights_are_found_or_the_reason_given(bench_bundle, tmp_path):
    from edgedistill.bench.plan import plan_rows, student_source
    from edgedistill.runtime import read_manifest

    manifest = read_manifest(bench_bundle)
    source, sha, why = student_source(manifest, bench_bundle)
    assert source is not None and source.name == "student.json" and sha == manifest.provenance["student"][
        "weights_sha256"] and why is None

    moved = manifest.model_copy(update={"provenance": dict(manifest.provenance, student={"run_dir": str(tmp_path / "gone")})})
    rows, skipped = plan_rows(moved, bench_bundle, backends=["torch", "onnxruntime"], precisions=["fp32"],
                              threads=[2], targets={"torch": "cpu", "onnxruntime": "CPUExecutionProvider"},
                              reasons={}, native_bf16=False)
    assert [r.id for r in rows] == ["onnxruntime:onnx_fp32:fp32:2t", "onnxruntime:onnx_fused_fp32:fp32:2t"]
    assert skipped[0]["backend"] == "torch" and "gone" in skipped[0]["reason"]

    # a bundle that carries the student itself needs no run directory
    own = tmp_path / "bundle"
    shutil.copytree(bench_bundle, own)
    run_dir = Path(manifest.provenance["student"]["run_dir"])
    for name in ("student.json", "student.safetensors"):
        shutil.copy(run_dir / name, own / name)
    assert student_source(moved, own)[0] == own / "student.json"


# ----------------------------------------------------------------------------- worker, report


def _sample_input(bundle: Path, tmp_path: Path) -> str:
    """The bundle's sample through its preprocessing, as the runner hands it to the workers."""
    from edgedistill.runtime import preprocess

    path = tmp_path / "input.npy"
    np.save(path, preprocess(bundle / "sample.png", json.loads((bundle / "manifest.json").read_text())["preprocessing"]))
    return str(path)


def test_worker_oneshot_protocol(bench_bundle, torch_blocked, tmp_path):
    spec = {"engine": "edgedistill.runtime.onnxruntime.engine", "backend": "onnxruntime",
            "model": str(bench_bundle / "onnx_int8.onnx"), "threads": 1, "device": "CPUExecutionProvider",
            "batches": [1, 3], "input": {"name": "pixel_values", "shape": [3, 16, 16]},
            "input_file": _sample_input(bench_bundle, tmp_path), "warmup": 1, "runs": 4, "mode": "oneshot"}
    env = {**os.environ, **torch_blocked}
    ballast = np.ones(40_000_000)  # 320 MB in the parent: a worker's peak memory must not inherit it
    done = subprocess.run([sys.executable, "-m", "edgedistill.runtime.worker"], input=json.dumps(spec) + "\n",
                          capture_output=True, text=True, env=env, timeout=120)
    del ballast
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = done.stdout.strip().splitlines()  # stdout carries the reply and nothing else
    reply = json.loads(line)
    assert reply["event"] == "result" and set(reply["times"]) == {"1", "3"}
    assert all(len(v) == 4 and min(v) > 0 for v in reply["times"].values())
    assert reply["output_shape"] == [1, 192] and 10 < reply["peak_rss_mb"] < 250

    torch_spec = dict(spec, engine="edgedistill.bench.torch_engine", backend="torch",
                      model=str(bench_bundle / "missing.json"))
    done = subprocess.run([sys.executable, "-m", "edgedistill.runtime.worker", json.dumps(torch_spec)],
                          capture_output=True, text=True, env=env, timeout=120)
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply == {"event": "error", "error": reply["error"], "unavailable": True}
    assert "torch is blocked" in reply["error"]


STANDALONE = """
import json, sys
sys.modules["edgedistill"] = sys.modules["torch"] = None  # neither may be imported, directly or not
sys.path.insert(0, sys.argv[1])
import worker
code = worker.main([sys.argv[2]])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("edgedistill", "torch") and sys.modules[m] is not None)
print(json.dumps({"loaded": loaded}), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_worker_runs_without_edgedistill(bench_bundle, tmp_path, runtime):
    """The worker and a runtime's engine, copied alone into a folder, measure a row: what a
    device without edgedistill (or torch) runs."""
    from edgedistill.runtime import registry, worker

    engine = registry.get(runtime).engine
    folder = tmp_path / "device"
    folder.mkdir()
    shutil.copy(worker.__file__, folder / "worker.py")
    shutil.copy(importlib.import_module(engine).__file__, folder / f"{runtime}_engine.py")
    model = bench_bundle / ("onnx_fp32.onnx" if runtime == "onnxruntime" else "openvino_fp32.xml")
    spec = {"engine": f"{runtime}_engine", "model": str(model), "threads": 1, "batches": [1, 2],
            "input": {"name": "pixel_values", "shape": [3, 16, 16]}, "input_file": _sample_input(bench_bundle, tmp_path),
            "inference_precision": "f32", "warmup": 1, "runs": 3, "mode": "oneshot"}
    done = subprocess.run([sys.executable, "-c", STANDALONE, str(folder), json.dumps(spec)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["event"] == "result" and reply["output_shape"] == [1, 192] and set(reply["times"]) == {"1", "2"}
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"loaded": []}


def test_summaries_and_plot_needs_knn_figures(tmp_path):
    from edgedistill.bench.report import write_plot
    from edgedistill.bench.stats import summarize_times

    stats = summarize_times([[1.0, 2.0, 3.0], [4.0, 5.0]], batch=4)
    assert stats["runs"] == 5 and stats["p50_ms"] == 3.0 and stats["min_ms"] == 1.0 and stats["max_ms"] == 5.0
    assert stats["round_p50_ms"] == [2.0, 4.5] and stats["throughput_ips"] == pytest.approx(4000 / 3, rel=1e-3)

    report = {"settings": {"batches": [1]}, "bundle": {"name": "x", "knn": None}, "machine": {"cpu": "cpu"},
              "rows": [{"id": "a", "backend": "onnxruntime", "variant": "onnx_fp32", "precision": "fp32",
                        "threads": 1, "baseline": True, "knn_top1": None, "batches": {"1": {"p50_ms": 1.0}}}]}
    assert write_plot(report, tmp_path / "none.png") is False and not (tmp_path / "none.png").exists()
    report["rows"][0]["knn_top1"] = 50.0
    assert write_plot(report, tmp_path / "one.png") is True and (tmp_path / "one.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- errors


def test_unavailable_device_lists_what_is_there(bench_bundle):
    from edgedistill.bench.machine import available_devices

    devices = available_devices()
    have = {d.lower().split(".")[0] for d in devices.get("openvino") or []} | \
           {p.lower() for p in devices.get("onnxruntime") or []}
    missing = next((d for d in ("gpu", "npu", "cuda") if d not in have and f"{d}executionprovider" not in have), None)
    if missing is None:
        pytest.skip("this machine has a GPU, an NPU and CUDA")
    line = one_line_error(run_cli("bench", "--bundle", str(bench_bundle), "--device", missing, "--no-progress"))
    assert f"device '{missing}' is not available" in line
    assert "CPUExecutionProvider" in line and "OpenVINO devices: CPU" in line


# (one variant's file missing is not a bad bundle: the other variants run, see
# test_one_deleted_variant_file_leaves_the_other_variants_usable)
@pytest.mark.parametrize("case", ["missing", "no_manifest", "bad_manifest"])
def test_bad_bundle_is_one_line_error(bench_bundle, tmp_path, case):
    bundle = tmp_path / "bundle"
    if case == "no_manifest":
        bundle.mkdir()
    elif case == "bad_manifest":
        bundle.mkdir()
        (bundle / "manifest.json").write_text('{"format_version": 1, "name": "x"')
    line = one_line_error(run_cli("bench", "--bundle", str(bundle), "--no-progress"))
    expected = {"missing": "bundle directory not found", "no_manifest": "has no manifest.json",
                "bad_manifest": "not valid JSON"}[case]
    assert expected in line


def test_bad_options_fail_before_measuring(bench_bundle):
    from edgedistill.bench.runner import run_bench

    for kwargs, message in [(dict(precisions="fp64"), "unknown --precision value 'fp64'"),
                            (dict(backends="tensorflow"), "unknown --backends value"),
                            (dict(threads="0"), "--threads values must be >= 1"),
                            (dict(batches="1,x"), "comma-separated integers"),
                            (dict(runs=5, seconds=1.0), "not both"),
                            (dict(backends="torch", precisions="int8"), "nothing to benchmark")]:
        with pytest.raises(EdgeDistillError, match=message):
            run_bench(bench_bundle, progress=False, **kwargs)


def test_a_batch_that_fails_keeps_the_rows_other_batches(bench_bundle, tmp_path):
    """A model that accepts batch 1 only (its input's batch dimension fixed): its batch-2 runs fail
    inside ONNX Runtime, the row keeps its batch-1 figures and says which batch failed and why
    (before, the whole row was dropped, batch 1 included)."""
    import onnx

    bundle = tmp_path / "bundle"
    shutil.copytree(bench_bundle, bundle)
    model = onnx.load(str(bundle / "onnx_fp32.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(bundle / "onnx_fp32.onnx"))
    report_file = tmp_path / "report.json"
    run = run_cli("bench", "--bundle", str(bundle), "--backends", "onnxruntime", "--precision", "fp32",
                  "--threads", "1", "--batch", "1,2", "--runs", "4", "--rounds", "2", "--warmup", "1",
                  "--no-verify", "--no-progress", "--json", str(report_file), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(report_file.read_text())["rows"]}
    assert "onnx_fp32" in rows, run.stdout
    fixed, other = rows["onnx_fp32"], rows["onnx_fused_fp32"]
    assert set(fixed["batches"]) == {"1"} and fixed["batches"]["1"]["runs"] == 4
    assert list(fixed["failed_batches"]) == ["2"] and "dimension" in fixed["failed_batches"]["2"].lower()
    assert set(other["batches"]) == {"1", "2"} and "failed_batches" not in other
    said = " ".join(run.stdout.split())
    assert "failed onnxruntime onnx_fp32 fp32 at batch 2 (its other batches stand)" in said
