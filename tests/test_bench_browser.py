"""``edgedistill bench --device browser``: the tiny bundle's ONNX variants in onnxruntime-web in
headless Chromium (WASM at 1 and 2 threads on the cross-origin isolated bench page, WebGPU
reported unavailable without an adapter), beside native ONNX Runtime at the same threads;
and the one-line error where the browser is missing. No timed assertions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_cli


def one_line_error(run) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def test_browser_bench_rows_join_the_report(tmp_path, request):
    from edgedistill.runtime.browser.page import browser_problem

    why = browser_problem()
    if why:
        pytest.skip(f"browser bench not run: {why} (.ci/install-deploy-deps.sh installs what it needs)")
    bundle = Path(request.getfixturevalue("tiny_bundle")["bundle"])  # after the skip: no export when it cannot run
    out = {k: tmp_path / f"report.{k}" for k in ("json", "csv", "png")}
    run = run_cli("bench", "--bundle", str(bundle), "--device", "browser", "--backends", "onnxruntime,onnxruntime-web",
                  "--threads", "1,2", "--batch", "1", "--runs", "6", "--rounds", "2", "--warmup", "1",
                  "--json", str(out["json"]), "--csv", str(out["csv"]), "--plot", str(out["png"]), "--no-progress",
                  timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out["json"].read_text())
    rows = {r["id"]: r for r in report["rows"]}
    manifest = json.loads((bundle / "manifest.json").read_text())
    onnx = {name: v for name, v in manifest["variants"].items() if v["format"] == "onnx"}
    loadable = {name for name, v in onnx.items() if "onnxruntime-web" in v["runtimes"]}
    assert "onnx_fp32" in loadable  # the browser always has a variant it can run
    web = {f"onnxruntime-web/wasm:{n}:{onnx[n]['precision']}:{t}t" for n in loadable for t in (1, 2)}
    native = {f"onnxruntime:{n}:{v['precision']}:{t}t" for n, v in onnx.items() for t in (1, 2)}
    assert set(rows) == web | native
    knn = manifest["validation"]["knn"]["variants"]
    for rid in web:
        row = rows[rid]
        stats = row["batches"]["1"]
        assert stats["runs"] == 6 and 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
        assert row["engine"] == "onnxruntime-web wasm" and row["device"] == "wasm" and row["output_shape"] == [1, 192]
        settings = row["settings"]
        assert settings["engine"] == "wasm" and settings["threads"] == row["threads"] and settings["wasm_simd"]
        assert settings["cross_origin_isolated"] is True and settings["runtime"].startswith("onnxruntime-web 1.")
        cold = row["cold_start"]
        for part in ("fetch_ms", "wasm_compile_ms", "session_ms", "first_run_ms"):
            assert cold[part] > 0, (rid, part, cold)
        assert row["cold_start_seconds"] > (cold["session_ms"] + cold["first_run_ms"]) / 1000
        assert row["knn_top1"] == knn[row["variant"]]["top1"]  # the export gated these kernels' native twins
        assert stats["speedup"] is not None  # against native ONNX Runtime FP32 at the same threads
    # WebGPU: tried once, unavailable without an adapter (headless, --disable-gpu), and said so
    web_skips = [s for s in report["skipped"] if s["backend"] == "onnxruntime-web"]
    webgpu = [s for s in web_skips if s.get("device") == "webgpu"]
    assert {s["variant"] for s in webgpu} == loadable
    # the variants onnxruntime-web cannot load are skipped with the reason, not attempted
    assert {s["variant"] for s in web_skips if s not in webgpu} == set(onnx) - loadable
    assert all(s["unavailable"] and s["device"] == "webgpu" and "WebGPU" in s["reason"] for s in webgpu)
    assert [b["row"] for b in report["baselines"]] == ["onnxruntime:onnx_fp32:fp32:1t", "onnxruntime:onnx_fp32:fp32:2t"]
    assert report["settings"]["device"] == "browser" and report["settings"]["threads"] == [1, 2]
    assert "onnxruntime-web wasm" in run.stdout and "WebGPU" in run.stdout

    with open(out["csv"], newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert {(ln["backend"], ln["device"], ln["threads"]) for ln in lines if ln["backend"] == "onnxruntime-web"} == \
        {("onnxruntime-web", "wasm", "1"), ("onnxruntime-web", "wasm", "2")}
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_bench_without_a_browser_is_one_line_error(tiny_bundle, tmp_path):
    line = one_line_error(run_cli("bench", "--bundle", tiny_bundle["bundle"], "--device", "browser", "--no-progress",
                                  env={"CHROMIUM": str(tmp_path / "no-chromium")}))
    assert "--device browser needs headless Chromium" in line and "install" in line
