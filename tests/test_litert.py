"""The ``litert`` bundle variants (``.tflite``, what Android apps load): a tiny student converted
by litert-torch to FP32 and quantized by ai-edge-quantizer to INT8, both judged by the export's
gates through the LiteRT interpreter; ``eval knn --variant`` reads them; the deploy example's
labels and embeddings equal the runtime's with torch unimportable; bench runs them in their
own worker processes. Skipped without ``edgedistill[litert]``; the one-line error for a missing
LiteRT runs everywhere."""

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
EXAMPLE = REPO / "deploy_examples" / "python_litert" / "classify.py"
MISSING = [m for m in ("ai_edge_litert", "litert_torch", "ai_edge_quantizer") if importlib.util.find_spec(m) is None]
needs_litert = pytest.mark.skipif(bool(MISSING), reason=f"LiteRT is not installed ({', '.join(MISSING)} missing: "
                                                        "pip install 'edgedistill[litert]')")


@pytest.fixture(scope="module")
def lt_bundle(labeled, tmp_path_factory) -> dict:
    from edgedistill.export import export_bundle

    run = tiny_student_run(tmp_path_factory.mktemp("lt_runs") / "tiny_student", projector=False)
    result = export_bundle(run, out_root=tmp_path_factory.mktemp("lt_export"), name="tiny_lt", formats="onnx,litert",
                           int8=True, data=str(labeled), calib_size=12, threads=1, progress=False)
    return {**as_dict(result), "data": labeled, "bundle": result.bundle, "run": run}


@needs_litert
def test_litert_variants_pass_the_gates(lt_bundle):
    from edgedistill.runtime.manifest import read_manifest
    from edgedistill.utils import sha256_file

    bundle = lt_bundle["bundle"]
    manifest = read_manifest(bundle, verify=True).as_json()
    assert [v for v in manifest["variants"] if v.startswith("litert")] == ["litert_fp32", "litert_int8"]
    for name in ("litert_fp32", "litert_int8"):
        entry = manifest["variants"][name]
        assert entry["format"] == "litert" and entry["file"] == f"{name}.tflite" and entry["batch"] == 1
        assert entry["sha256"] == sha256_file(bundle / entry["file"]) and entry["size_bytes"] > 10_000
        assert entry["runtime"]["library"] == "ai-edge-litert" and entry["runtime"]["delegate"] == "XNNPACK"
        assert entry["runtime"]["version"] == manifest["provenance"]["versions"]["ai-edge-litert"]
    quant = manifest["variants"]["litert_int8"]["quantization"]
    assert quant["recipe"] == "dynamic_wi8_afp32" and quant["calibration"] == "none" and quant["calibration_images"] == 0
    assert manifest["variants"]["litert_int8"]["size_bytes"] < manifest["variants"]["litert_fp32"]["size_bytes"] / 2

    validation = manifest["validation"]
    fp32 = validation["parity"]["variants"]["litert_fp32"]
    assert fp32["gated"] and fp32["passed"] and fp32["min_cosine"] >= 0.9999  # batch 1 and 8 (8 invocations)
    int8 = validation["parity"]["variants"]["litert_int8"]
    assert not int8["gated"] and int8["min_cosine"] > 0.99
    knn = validation["knn"]["variants"]
    assert knn["litert_fp32"]["passed"] and knn["litert_int8"]["passed"]
    assert knn["litert_int8"]["knn_delta"] >= -validation["knn"]["max_drop"]


@needs_litert
def test_eval_knn_reads_the_litert_variant(lt_bundle, tmp_path):
    """``eval knn --variant`` opens the .tflite through the registry: the same figure the gate recorded."""
    out = tmp_path / "knn.json"
    run = run_cli("eval", "knn", "--model", str(lt_bundle["bundle"]), "--variant", "litert_int8",
                  "--data", str(lt_bundle["data"]), "--threads", "1", "--workers", "0", "--json", str(out),
                  "--no-progress")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["model"]["backend"] == "litert" and result["model"]["variant"] == "litert_int8"
    gate = lt_bundle["manifest"]["validation"]["knn"]["variants"]["litert_int8"]
    assert result["top1"] == pytest.approx(gate["top1"])


def _example(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, env=full, timeout=300)


@needs_litert
def test_deploy_example_equals_the_runtime_without_torch(lt_bundle, tmp_path):
    from edgedistill.data.folders import scan_folder
    from edgedistill.runtime import knn_predict, open_embedder, preprocess_batch

    shadow = tmp_path / "shadow"
    (shadow / "torch").mkdir(parents=True)
    (shadow / "torch" / "__init__.py").write_text('raise ImportError("torch is blocked for this test")\n')
    bundle, data, variant = lt_bundle["bundle"], lt_bundle["data"], "litert_int8"  # what an app ships
    queries = sorted((data / "val").glob("*/*.png"))
    gallery_json = tmp_path / "gallery.json"
    proc = _example("--bundle", str(bundle), "--gallery", str(data / "train"), "--variant", variant, "--threads", "1",
                    "--json", "--gallery-json", str(gallery_json), "--images", *map(str, queries),
                    env={"PYTHONPATH": str(shadow)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["variant"] == variant

    spec = lt_bundle["manifest"]["preprocessing"]
    embedder = open_embedder(bundle, variant, threads=1)
    paths, labels, classes = scan_folder(data / "train", require_labels=True)
    bank = embedder.embed(preprocess_batch(paths, spec))
    mine = np.asarray(json.loads(gallery_json.read_text())["embeddings"], np.float64)
    np.testing.assert_allclose(mine, bank / np.linalg.norm(bank, axis=1, keepdims=True), atol=1e-6)
    feats = np.concatenate([embedder.embed(preprocess_batch([p], spec)) for p in queries])
    expected = knn_predict(bank, np.array(labels), feats, k=20, num_classes=len(classes))
    assert [p["label"] for p in result["predictions"]] == [classes[i] for i in expected]


@needs_litert
def test_bench_runs_the_litert_models(lt_bundle):
    from edgedistill.bench.runner import run_bench

    report = run_bench(lt_bundle["bundle"], backends="litert", threads=[1], batches=[1, 2], runs=4, rounds=2,
                       warmup=1, progress=False)
    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) == {"litert:litert_fp32:fp32:1t", "litert:litert_int8:int8:1t"}
    knn = lt_bundle["manifest"]["validation"]["knn"]["variants"]
    for row in rows.values():
        assert row["output_shape"] == [1, 192] and set(row["batches"]) == {"1", "2"}
        assert row["settings"]["num_threads"] == 1 and row["settings"]["static_batch"] == 1
        assert row["knn_top1"] == knn[row["variant"]]["top1"] and row["load_seconds"] > 0
    assert report["machine"]["versions"]["ai-edge-litert"]


def test_export_without_litert_is_one_line_error(student_run, labeled, tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "litert_torch").mkdir(parents=True)
    (shadow / "litert_torch" / "__init__.py").write_text('raise ImportError("litert_torch is blocked for this test")\n')
    paths = [str(shadow), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    run = run_cli("export", "--model", str(student_run), "--formats", "onnx,litert", "--data", str(labeled),
                  "--out", str(tmp_path / "export"), env={"PYTHONPATH": os.pathsep.join(paths)})
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "needs LiteRT" in lines[0] and "edgedistill[litert]" in lines[0], run.stderr
    assert not (tmp_path / "export").exists()
