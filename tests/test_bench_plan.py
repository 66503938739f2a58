"""bench's planning and statistics as plain functions: which rows a bundle gives on which
machine (and why others are left out), the baseline, ratios and the best rows. No processes."""

from __future__ import annotations

import pytest

from edgedistill.errors import EdgeDistillError

KNN = {"torch_fp32": {"top1": 60.0}, "variants": {
    "onnx_fp32": {"top1": 60.0, "knn_delta": 0.0}, "onnx_int8": {"top1": 59.5, "knn_delta": -0.5},
    "openvino_fp32": {"top1": 60.0, "knn_delta": 0.0},
    "openvino_int8": {"top1": 59.0, "knn_delta": -1.0, "f32_fallback": {"top1": 59.2, "knn_delta": -0.8}}}}


def manifest(int8_hint: str = "bf16") -> dict:
    def var(fmt: str, precision: str, **extra) -> dict:
        name = f"{fmt}_{precision}"
        return {"file": f"{name}.{'onnx' if fmt == 'onnx' else 'xml'}", "format": fmt, "precision": precision,
                "total_size_bytes": 1000, **extra}

    return {"format_version": 1, "name": "t", "input": {"name": "pixel_values", "shape": [-1, 3, 16, 16]},
            "outputs": [{"name": "embedding", "dims": [-1, 192]}],
            "preprocessing": {"resize": 18, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3},
            "variants": {"onnx_fp32": var("onnx", "fp32"), "onnx_int8": var("onnx", "int8"),
                         "openvino_fp32": var("openvino", "fp32", inference_precision_hint="f32"),
                         "openvino_int8": var("openvino", "int8", inference_precision_hint=int8_hint)},
            "validation": {"knn": KNN}}


def typed(manifest: dict):
    """The manifest as every reader sees it (validated against the model)."""
    from edgedistill.runtime.manifest import validate_manifest

    return validate_manifest(manifest)


@pytest.fixture
def bundle_dir(tmp_path):
    (tmp_path / "student.json").write_text("{}")
    (tmp_path / "student.safetensors").write_bytes(b"\0" * 10)
    for name in ("onnx_fp32.onnx", "onnx_int8.onnx", "openvino_fp32.xml", "openvino_fp32.bin", "openvino_int8.xml",
                 "openvino_int8.bin", "executorch_fp32.pte", "executorch_int8.pte"):  # planning skips a variant whose files are missing
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def plan(bundle_dir, native_bf16: bool, int8_hint: str = "bf16", **kw):
    from edgedistill.bench.plan import device_targets, plan_rows

    targets, reasons = device_targets(kw.pop("device", "cpu"), {"onnxruntime": ["CPUExecutionProvider"],
                                                                "openvino": ["CPU"]})
    rows, skipped = plan_rows(typed(manifest(int8_hint)), bundle_dir, backends=kw.get("backends", ["torch", "onnxruntime",
                                                                                          "openvino"]),
                              precisions=kw.get("precisions", ["fp32", "bf16", "fp16", "int8"]), threads=[1, 2],
                              targets=targets, reasons=reasons, native_bf16=native_bf16)
    return {r.id: r for r in rows}, skipped


def test_rows_on_a_cpu_with_native_bf16(bundle_dir):
    rows, skipped = plan(bundle_dir, native_bf16=True)
    one = {i for i in rows if i.endswith(":1t")}
    assert one == {"torch:student:fp32:1t", "torch:student:bf16@bf16:1t",
                   "onnxruntime:onnx_fp32:fp32:1t", "onnxruntime:onnx_int8:int8:1t",
                   "openvino:openvino_fp32:fp32@f32:1t", "openvino:openvino_fp32:bf16@bf16:1t",
                   "openvino:openvino_int8:int8@bf16:1t", "openvino:openvino_int8:int8@f32:1t",
                   "openvino:onnx_int8:int8@f32:1t"}
    assert len(rows) == 2 * len(one) and not skipped
    # k-NN only where a row runs as the gate ran it: the bf16-hint INT8 at bf16, its f32 fallback
    assert rows["openvino:openvino_int8:int8@bf16:1t"].knn_top1 == 59.0
    assert rows["openvino:openvino_int8:int8@f32:1t"].knn_top1 == 59.2
    assert rows["openvino:openvino_fp32:bf16@bf16:1t"].knn_top1 is None
    assert rows["openvino:onnx_int8:int8@f32:1t"].knn_top1 is None
    assert rows["torch:student:fp32:1t"].knn_top1 == 60.0 and rows["torch:student:fp32:1t"].knn_delta == 0.0


def test_rows_without_native_bf16_and_with_a_precision_filter(bundle_dir):
    rows, skipped = plan(bundle_dir, native_bf16=False, int8_hint="f32")
    assert not [i for i in rows if "bf16" in i]
    assert {(s["backend"], s["precision"], s["reason"]) for s in skipped} == {
        ("torch", "bf16", "this CPU has no native bf16"), ("openvino", "bf16", "this CPU has no native bf16")}
    rows, _ = plan(bundle_dir, native_bf16=True, int8_hint="f32", precisions=["int8"], backends=["openvino"])
    # an f32-hint INT8 also runs with a bf16 hint where the CPU has it: faster, not gated
    assert set(rows) == {f"openvino:{v}:int8@{h}:{t}t" for v, h in (("openvino_int8", "f32"),
                                                                   ("openvino_int8", "bf16"),
                                                                   ("onnx_int8", "f32")) for t in (1, 2)}


def test_torch_baseline_needs_its_weights(tmp_path):
    rows, skipped = plan(tmp_path, native_bf16=False, backends=["torch"])
    assert rows == {} and "no student weights" in skipped[0]["reason"]


def test_device_targets():
    from edgedistill.bench.plan import device_targets

    devices = {"onnxruntime": ["CUDAExecutionProvider", "CPUExecutionProvider"], "openvino": ["CPU", "GPU"]}
    targets, reasons = device_targets("gpu", devices)
    assert targets == {"onnxruntime": "CUDAExecutionProvider", "openvino": "GPU"} and "torch" in reasons
    with pytest.raises(EdgeDistillError, match="ONNX Runtime providers: CPUExecutionProvider; OpenVINO devices: CPU"):
        device_targets("npu", {"onnxruntime": ["CPUExecutionProvider"], "openvino": ["CPU"]})


def test_options():
    from edgedistill.bench.plan import BenchOptions

    opts = BenchOptions.parse("torch,onnxruntime", None, "2,1,2", "8,1", 3, None, None, 4, True)
    assert opts.threads == [2, 1] and opts.batches == [1, 8] and opts.seconds == 2.0
    assert opts.per_round == {"seconds": 0.5, "min_runs": 1}
    assert BenchOptions.parse(None, None, "1", "1", 0, 10, None, 4, True).per_round == {"runs": 3}
    assert BenchOptions.parse(None, None, "1", "1", 0, 2, None, 5, True).rounds == 2  # never more rounds than runs
    for args, message in [(("tflite", None, "1", "1", 0, None, None, 1, True), "unknown --backends value"),
                          ((None, None, "0", "1", 0, None, None, 1, True), "--threads values must be >= 1"),
                          ((None, None, "1", "1", 0, 5, 1.0, 1, True), "not both"),
                          ((None, None, "1", "1", 0, None, None, 0, True), "--rounds")]:
        with pytest.raises(EdgeDistillError, match=message):
            BenchOptions.parse(*args)


def row(rid: str, backend: str, precision: str, p50: list[float], threads: int = 1) -> dict:
    from edgedistill.bench.stats import summarize_times

    return {"id": rid, "label": rid, "backend": backend, "variant": rid, "precision": precision,
            "threads": threads, "knn_top1": None, "knn_delta": None, "engine": backend,
            "inference_precision": None,
            "batches": {"1": summarize_times([[v] for v in p50], 1)}}


def test_baseline_ratios_and_best():
    from edgedistill.bench.stats import add_ratios, baselines, best_rows

    rows = [row("torch", "torch", "fp32", [10.0, 12.0]), row("ort", "onnxruntime", "fp32", [8.0, 6.0]),
            row("int8", "onnxruntime", "int8", [2.5, 3.0])]
    bases = baselines(rows, [1], [])
    assert bases == [{"threads": 1, "row": "torch", "label": "torch eager fp32", "fallback_reason": None}]
    add_ratios(rows, bases)
    stats = {r["id"]: r["batches"]["1"] for r in rows}
    assert rows[0]["baseline"] and stats["torch"]["latency_ratio"] == 1.0
    assert stats["ort"]["latency_ratio"] == pytest.approx(7.0 / 11.0, rel=1e-3)
    # paired round by round: 8/10 and 6/12
    assert stats["ort"]["latency_ratio_by_round"] == {"median": 0.65, "min": 0.5, "max": 0.8}
    assert stats["int8"]["speedup"] == pytest.approx(11.0 / 2.75, rel=1e-3)
    # without k-NN figures: the fastest FP32 row per backend (torch is no backend to ship)
    best = best_rows(rows, 1, None)
    assert set(best) == {"onnxruntime"} and best["onnxruntime"]["row"] == "ort"
    assert "no k-NN figures" in best["onnxruntime"]["reason"]
    # with them: the fastest within the gate, whatever its precision
    for r, top1 in zip(rows, (60.0, 60.0, 59.5)):
        r["knn_top1"], r["knn_delta"] = top1, top1 - 60.0
    best = best_rows(rows, 1, {"torch_fp32_top1": 60.0, "val_images": 400, "max_drop": 1.0})
    assert best["onnxruntime"]["row"] == "int8" and best["onnxruntime"]["knn_delta"] == -0.5
    assert best_rows(rows, 1, {"torch_fp32_top1": 60.0, "max_drop": 0.25})["onnxruntime"]["row"] == "ort"


def test_baseline_without_torch_says_why():
    from edgedistill.bench.stats import baselines

    rows = [row("ov", "openvino", "int8", [1.0]), row("ort", "onnxruntime", "fp32", [2.0])]
    (base,) = baselines(rows, [1], [{"backend": "torch", "precision": "fp32", "reason": "torch is not installed"}])
    assert base["row"] == "ort" and base["fallback_reason"] == "torch eager fp32 unavailable: torch is not installed"


# ----------------------------------------------------------------------------- edge targets


def edge_manifest() -> dict:
    m = manifest()
    for precision in ("fp32", "int8"):
        m["variants"][f"executorch_{precision}"] = {"file": f"executorch_{precision}.pte", "format": "executorch",
                                                    "precision": precision, "total_size_bytes": 1000}
    # as a bundle written before knn_delta records it: drop = torch minus the variant
    m["validation"]["knn"]["variants"]["executorch_int8"] = {"top1": 59.6, "drop": 0.4}
    return m


def test_browser_and_executorch_rows(bundle_dir):
    from edgedistill.bench.plan import BenchOptions, device_targets, plan_rows

    devices = {"onnxruntime": ["CPUExecutionProvider"], "openvino": ["CPU"], "executorch": ["XNNPACK"]}
    targets, reasons = device_targets("browser", devices)
    assert targets == {"torch": "cpu", "onnxruntime": "CPUExecutionProvider", "openvino": "CPU",
                       "executorch": "XNNPACK", "onnxruntime-web": "browser"}
    rows, skipped = plan_rows(typed(edge_manifest()), bundle_dir, backends=["onnxruntime-web", "executorch"],
                              precisions=["fp32", "int8"], threads=[1, 2], targets=targets, reasons=reasons,
                              native_bf16=False)
    rows = {r.id: r for r in rows}
    # WASM at each thread count, WebGPU once (in the first group); ExecuTorch's programs natively
    assert set(rows) == {f"onnxruntime-web/wasm:onnx_{p}:{p}:{t}t" for p in ("fp32", "int8") for t in (1, 2)} | \
        {f"onnxruntime-web/webgpu:onnx_{p}:{p}:1t" for p in ("fp32", "int8")} | \
        {f"executorch:executorch_{p}:{p}:{t}t" for p in ("fp32", "int8") for t in (1, 2)}
    assert not skipped
    web = rows["onnxruntime-web/wasm:onnx_int8:int8:2t"]
    assert web.label == "onnxruntime-web wasm onnx_int8" and web.extra == {"engine": "wasm", "model_url": "onnx_int8.onnx"}
    assert web.knn_top1 == 59.5 and rows["executorch:executorch_int8:int8:1t"].knn_delta == -0.4

    # --device cpu: ExecuTorch rows, no browser rows; without ExecuTorch they are skipped, saying why
    targets, reasons = device_targets("cpu", {k: v for k, v in devices.items() if k != "executorch"})
    rows, skipped = plan_rows(typed(edge_manifest()), bundle_dir, backends=["onnxruntime-web", "executorch"],
                              precisions=["fp32"], threads=[1], targets=targets, reasons=reasons, native_bf16=False)
    assert rows == [] and {s["reason"] for s in skipped} == {"executorch is not installed"}
    # a device other than cpu/browser has neither
    _, reasons = device_targets("gpu", {"onnxruntime": ["CUDAExecutionProvider"], "openvino": ["CPU"]})
    assert "XNNPACK" in reasons["executorch"] and "--device browser" in reasons["onnxruntime-web"]

    # the browser measures 1 thread as well by default (several only on an isolated page)
    from edgedistill.bench.machine import usable_cpus

    assert BenchOptions.parse(None, None, None, "1", 0, 2, None, 1, True, device="browser").threads == \
        sorted({1, usable_cpus()})
    assert BenchOptions.parse(None, None, None, "1", 0, 2, None, 1, True).threads == [usable_cpus()]


def test_recommendation_rule():
    """The fastest within the gate; a speed tie (within 5%) goes to accuracy only by more than the
    validation set's resolution; a row without a k-NN figure is no candidate beside validated ones."""
    from edgedistill.runtime.recommend import Candidate, recommend, recommend_line, resolution

    def c(variant: str, ms: float, delta: float | None, precision: str = "int8") -> Candidate:
        return Candidate("onnxruntime", variant, precision, ms, None if delta is None else 70.0 + delta, delta,
                         fp32=precision == "fp32")

    rows = [c("fp32", 10.0, 0.0, "fp32"), c("int8", 5.0, -0.9), c("fused_int8", 5.1, 0.5), c("lossy", 2.0, -1.5),
            c("unvalidated", 1.0, None)]
    assert resolution(70.0, 360) == pytest.approx(2.42, abs=0.01) and resolution(None, 360) == 0.0
    assert recommend(rows, 1.0, noise=2.42)["onnxruntime"].candidate.variant == "int8"  # 1.4 points: noise
    choice = recommend(rows, 1.0, noise=1.0)["onnxruntime"]
    assert choice.candidate.variant == "fused_int8" and "more accurate" in choice.reason
    assert recommend(rows, 2.0)["onnxruntime"].candidate.variant == "lossy"
    line = recommend_line(recommend(rows, 1.0, noise=2.42)["onnxruntime"], "ONNX Runtime")
    assert line.startswith("Recommended for ONNX Runtime: int8 (int8; k-NN top-1 69.10, knn_delta -0.90): "
                           "the fastest within the 1-point k-NN gate of torch FP32")
    # no k-NN figures at all: the fastest FP32 variant (held to torch by the parity gate)
    bare = [Candidate("openvino", "ov_int8", "int8", 1.0), Candidate("openvino", "ov_fp32", "fp32", 3.0, fp32=True)]
    assert recommend(bare, 1.0)["openvino"].candidate.variant == "ov_fp32"
