"""`edgedistill pipeline`: every stage on tiny data, a report, and a re-run that skips what is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder, run_cli


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    make_image_folder(data / "train", classes=3, per_class=16, size=16, seed=1)
    make_image_folder(data / "val", classes=3, per_class=6, size=16, seed=2)
    config = {
        "run": {"name": "tiny", "threads": 1},
        "data": {"path": str(data), "img_size": 16, "batch_size": 8, "num_workers": 0},
        "pretrain": {"arch": "vit_small_patch16_224", "patch_size": 4, "depth": 2, "epochs": 2, "warmup_epochs": 1,
                     "out_dim": 64, "local_crops": 2, "local_crop_size": 8, "log_every": 1},
        "teacher": {"arch": "vit_small_patch16_224", "patch_size": 4, "depth": 2},
        "student": {"arch": "vit_tiny_patch16_224", "patch_size": 4, "depth": 2},
        "distill": {"epochs": 2, "warmup_epochs": 1, "log_every": 1, "blr": 0.001},
        "export": {"calib_size": 8},
        "bench": {"backends": ["onnxruntime", "openvino"], "threads": [1], "batch": [1], "runs": 3, "warmup": 1},
        "pipeline": {"attention_images": 2, "edge": "off"},  # edge rows: test_report_shows_edge_rows
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    # stdout is a pipe here, as in `make demo > log.txt` (COLUMNS unset, as in most logs)
    first = run_cli("pipeline", str(path), "--runs", str(root / "runs"), "--export-root", str(root / "export"),
                    cwd=root, env={"COLUMNS": ""})
    return root, first, path


def test_pipeline_runs_every_stage(pipeline_run):
    root, first, _ = pipeline_run
    assert first.returncode == 0, first.stderr[-3000:]
    run = root / "runs" / "tiny"
    assert (run / "teacher" / "teacher.safetensors").is_file()
    assert (run / "student" / "student.safetensors").is_file()
    # distill used the pretrained teacher, not a random one
    assert json.loads((run / "student" / "student.json").read_text())["teacher"]["kind"] == "run_dir"
    knn = json.loads((run / "eval.json").read_text())
    assert set(knn) == {"teacher", "student", "random_student", "random_teacher"}
    assert all(0 <= v["top1"] <= 100 for v in knn.values())
    manifest = json.loads((root / "export" / "tiny" / "manifest.json").read_text())
    assert {"onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_int8"} <= set(manifest["variants"])
    bench = json.loads((run / "bench.json").read_text())
    assert bench["rows"]


def test_pipeline_results_are_readable_in_a_log(pipeline_run):
    """The bench table and the summary go to stdout at full width: before, they went to stderr
    cut to 80 columns (`tor… │ stu… │ fp…`)."""
    _, first, _ = pipeline_run
    lines = first.stdout.splitlines()
    table = [line for line in lines if "│" in line]
    assert any("onnxruntime" in line and "onnx_fp32" in line and "fp32" in line for line in table), first.stdout
    assert any("k-NN top-1 student" in line for line in lines) and not any("…" in line for line in lines)


def test_pipeline_writes_a_report(pipeline_run):
    root, first, _ = pipeline_run
    report = root / "runs" / "tiny" / "report"
    text = (report / "README.md").read_text()
    assert "k-NN top-1" in text and "random_student" in text and "Latency" in text
    for png in ("loss_curves.png", "attention.png"):
        assert (report / png).stat().st_size > 1000, png
        assert f"({png})" in text
    assert "k-NN top-1 student" in first.stdout  # the closing summary table


def test_rerun_skips_finished_stages(pipeline_run):
    """The pipeline runs once; a second call (in this process) finds every stage done."""
    from edgedistill.config import build_config
    from edgedistill.pipeline import run_pipeline

    root, first, config = pipeline_run
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_pipeline(build_config(config), runs_root=root / "runs", export_root=root / "export")
    assert [s["status"] for s in again["stages"]] == ["skipped (already done)"] * 5
    assert again["summary"]["knn"]["student"] == json.loads((root / "runs" / "tiny" / "eval.json").read_text())[
        "student"]["top1"]


def test_pipeline_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  stages: [pretrain, distil]\n")
    result = run_cli("pipeline", str(bad), cwd=tmp_path)
    assert result.returncode == 2 and "unknown stage" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("pipeline", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_report_shows_edge_rows(tmp_path):
    """Where the edge targets ran, the report's latency table and plot carry their rows."""
    from edgedistill.bench.stats import best_rows, summarize_times
    from edgedistill.config import Config
    from edgedistill.pipeline import PipelinePaths
    from edgedistill.pipeline.report import summarize, write_report

    cfg = Config()
    paths = PipelinePaths.for_config(cfg, runs_root=tmp_path / "runs", export_root=tmp_path / "export")
    paths.root.mkdir(parents=True)

    def row(backend, device, variant, precision, p50, knn, engine=None):
        stats = dict(summarize_times([[p50]], 1), speedup=10 / p50)
        return {"id": f"{backend}/{device}:{variant}", "label": variant, "backend": backend, "device": device,
                "engine": engine or backend,
                "variant": variant, "precision": precision, "inference_precision": None, "threads": 2,
                "baseline": backend == "torch", "knn_top1": knn, "knn_delta": -0.1, "batches": {"1": stats}}

    bench = {"settings": {"batches": [1]}, "machine": {"cpu": "test cpu"},
             "bundle": {"name": "tiny", "knn": {"torch_fp32_top1": 60.0, "max_drop": 1.0, "k": 20}},
             "rows": [row("torch", "cpu", "student", "fp32", 10.0, 60.0),
                      row("executorch", "XNNPACK", "executorch_int8", "int8", 4.0, 59.9),
                      dict(row("openvino", "CPU", "openvino_fp32", "fp32", 3.0, None), inference_precision="bf16",
                           knn_delta=None),
                      row("onnxruntime-web", "wasm", "onnx_int8", "int8", 7.0, 59.8, "onnxruntime-web wasm")]}
    bench["best"] = best_rows(bench["rows"], 1, bench["bundle"]["knn"])
    paths.bench.write_text(json.dumps(bench))
    summary = summarize(paths)
    # the row without a k-NN figure (fp32 compiled at bf16: never gated) comes last
    assert [line["backend"] for line in summary["latency"]] == ["torch", "executorch", "onnxruntime-web (wasm)",
                                                                 "openvino"]
    report = write_report(cfg, paths, summary, [])
    text = (report / "README.md").read_text()
    assert "| executorch | executorch_int8 | int8 | 2 | 4.00 | 4.00 | 2.50 | 59.90 | -0.10 |" in text
    assert "| onnxruntime-web (wasm) | onnx_int8 | int8 | 2 | 7.00 |" in text
    assert "| openvino | openvino_fp32 | fp32@bf16 | 2 | 3.00 | 3.00 | 3.33 | - | - |" in text
    assert "Recommended for ExecuTorch, 2 threads: executorch_int8 (int8; k-NN top-1 59.90, knn_delta -0.10)" in text
    assert "Recommended for OpenVINO" not in text  # its only row has no k-NN figure, beside validated ones
    assert (report / "latency_vs_knn.png").stat().st_size > 1000 and "(latency_vs_knn.png)" in text


def test_edge_targets_follow_the_config(monkeypatch):
    from dataclasses import replace

    from edgedistill.config import Config
    from edgedistill.errors import EdgeDistillError
    from edgedistill.pipeline import edge_targets

    cfg = Config()
    off = edge_targets(cfg)  # by default the pipeline exports and benches what the config lists, as export does
    assert off.formats == off.backends == () and off.device == "cpu"
    monkeypatch.setenv("CHROMIUM", "/nonexistent/chromium")
    auto = edge_targets(replace(cfg, pipeline=replace(cfg.pipeline, edge="auto")))  # auto: only where it can run
    assert "onnxruntime-web" not in auto.backends and auto.device == "cpu"
    with pytest.raises(EdgeDistillError, match="install"):
        edge_targets(replace(cfg, pipeline=replace(cfg.pipeline, edge="on")))
