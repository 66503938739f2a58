"""The ``executorch`` bundle variants (``.pte``, XNNPACK delegate): a tiny student exported to
FP32 and PT2E INT8 programs, both judged by the export's gates through ExecuTorch's Python
runtime; the deploy example's labels and embeddings equal the runtime's; bench runs them in
their own worker processes. Skipped without ``edgedistill[executorch]``; the one-line error
for a missing ExecuTorch runs everywhere."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import as_dict, run_cli, tiny_student_run

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy_examples" / "python_executorch" / "classify.py"
needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="ExecuTorch is not installed (pip install 'edgedistill[executorch]')")


@pytest.fixture(scope="module")
def et_bundle(labeled, tmp_path_factory) -> dict:
    from edgedistill.export import export_bundle

    run = tiny_student_run(tmp_path_factory.mktemp("et_runs") / "tiny_student", projector=False)
    result = export_bundle(run, out_root=tmp_path_factory.mktemp("et_export"), name="tiny_et", formats="executorch",
                           int8=True, data=str(labeled), calib_size=12, threads=1, progress=False)
    return {**as_dict(result), "data": labeled, "bundle": result.bundle}


@needs_executorch
def test_executorch_variants_pass_the_gates(et_bundle):
    from edgedistill.runtime.manifest import read_manifest
    from edgedistill.utils import sha256_file

    bundle = et_bundle["bundle"]
    manifest = read_manifest(bundle, verify=True).as_json()
    assert list(manifest["variants"]) == ["executorch_fp32", "executorch_int8"]
    for name, entry in manifest["variants"].items():
        assert entry["format"] == "executorch" and entry["file"] == f"{name}.pte"
        assert entry["sha256"] == sha256_file(bundle / entry["file"]) and entry["size_bytes"] > 10_000
        assert entry["runtime"]["library"] == "executorch" and entry["runtime"]["delegate"] == "XNNPACK"
        assert entry["runtime"]["version"] == manifest["provenance"]["versions"]["executorch"]
    quant = manifest["variants"]["executorch_int8"]["quantization"]
    assert quant["ops"] == ["linear", "conv2d"] and "per channel" in quant["weights"]
    assert quant["calibration"]["images"] == 12
    assert manifest["variants"]["executorch_int8"]["size_bytes"] < manifest["variants"]["executorch_fp32"]["size_bytes"] / 2

    validation = manifest["validation"]
    fp32 = validation["parity"]["variants"]["executorch_fp32"]
    assert fp32["gated"] and fp32["passed"] and fp32["min_cosine"] >= 0.9999  # batch 1 and 8
    int8 = validation["parity"]["variants"]["executorch_int8"]
    assert not int8["gated"] and int8["min_cosine"] > 0.99
    knn = validation["knn"]["variants"]
    assert knn["executorch_fp32"]["passed"] and knn["executorch_int8"]["passed"]
    assert knn["executorch_int8"]["knn_delta"] >= -validation["knn"]["max_drop"]
    timing = validation["timing"]["p50_ms"]  # the fastest within the gate is the variant to ship
    assert timing[manifest["default_variant"]] <= 1.05 * min(timing.values())
    assert manifest["recommended"] == {"executorch": manifest["default_variant"]}


def _example(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, env=env, timeout=300)


@needs_executorch
def test_deploy_example_equals_the_runtime(et_bundle, tmp_path):
    from edgedistill.data.folders import scan_folder
    from edgedistill.runtime import knn_predict, open_embedder, preprocess_batch

    bundle, data, variant = et_bundle["bundle"], et_bundle["data"], "executorch_int8"  # what an app ships
    queries = sorted((data / "val").glob("*/*.png"))
    gallery_json = tmp_path / "gallery.json"
    proc = _example("--bundle", str(bundle), "--gallery", str(data / "train"), "--variant", variant, "--threads", "1",
                    "--json", "--gallery-json", str(gallery_json), "--images", *map(str, queries))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["variant"] == variant

    spec = et_bundle["manifest"]["preprocessing"]
    embedder = open_embedder(bundle, variant, threads=1)
    paths, labels, classes = scan_folder(data / "train", require_labels=True)
    bank = embedder.embed(preprocess_batch(paths, spec))
    gallery = json.loads(gallery_json.read_text())
    mine = np.asarray(gallery["embeddings"], np.float64)
    ref = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    np.testing.assert_allclose(mine, ref, atol=1e-6)  # the same program through the same runtime
    feats = np.concatenate([embedder.embed(preprocess_batch([p], spec)) for p in queries])
    expected = knn_predict(bank, np.array(labels), feats, k=20, num_classes=len(classes))
    assert [p["label"] for p in result["predictions"]] == [classes[i] for i in expected]


@needs_executorch
def test_bench_runs_the_programs(et_bundle):
    from edgedistill.bench.runner import run_bench

    # batch 65: over the program's dynamic bound (64), run in chunks (before: set_inputs() error 0x10,
    # and the row's batch-1 figures lost with it)
    report = run_bench(et_bundle["bundle"], backends="executorch", precisions="int8", threads=[1], batches=[1, 65],
                       runs=2, rounds=2, warmup=1, progress=False)
    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) == {"executorch:executorch_int8:int8:1t"}
    knn = et_bundle["manifest"]["validation"]["knn"]["variants"]
    for row in rows.values():
        assert row["output_shape"] == [1, 192] and set(row["batches"]) == {"1", "65"}
        assert row["settings"]["threads_read_back"] == 1 and row["settings"]["delegate"] == "XNNPACK"
        assert row["settings"]["max_batch"] == 64 and "chunks of 64" in row["settings"]["shapes"]
        assert row["knn_top1"] == knn[row["variant"]]["top1"] and row["load_seconds"] > 0
    assert report["machine"]["versions"]["executorch"]


def test_export_without_executorch_is_one_line_error(student_run, labeled, tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "executorch").mkdir(parents=True)
    (shadow / "executorch" / "__init__.py").write_text('raise ImportError("executorch is blocked for this test")\n')
    paths = [str(shadow), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    run = run_cli("export", "--model", str(student_run), "--formats", "onnx,executorch", "--data", str(labeled),
                  "--out", str(tmp_path / "export"), env={"PYTHONPATH": os.pathsep.join(paths)})
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "needs ExecuTorch" in lines[0] and "edgedistill[executorch]" in lines[0], run.stderr
    assert not (tmp_path / "export").exists()
