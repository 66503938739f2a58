"""``edgedistill export``: a tiny random student -> a gated bundle; the bundle read back by the
runtime and by plain onnxruntime / openvino; gates that fail and interrupts leave nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TEACHER_DIM as TEACHER_DIM
from conftest import make_image_folder, run_cli
from edgedistill.errors import EdgeDistillError
from edgedistill.utils import cpu_has_native_bf16

@pytest.fixture(scope="session")
def bundle(tiny_bundle) -> dict:
    """The full export, once (conftest's, shared with the bench and deploy tests)."""
    return tiny_bundle


def leftovers(root: Path) -> list[str]:
    """What is in ``root`` besides the empty lock files of finished exports (each free again)."""
    from filelock import FileLock

    names = sorted(p.name for p in root.iterdir()) if root.exists() else []
    for lock in [n for n in names if n.startswith(".") and n.endswith(".lock")]:
        assert (root / lock).stat().st_size == 0
        FileLock(root / lock, timeout=0).acquire().lock.release()  # Timeout if an export still held it
    return [n for n in names if not (n.startswith(".") and n.endswith(".lock"))]


# ----------------------------------------------------------------------------- the bundle


def test_full_bundle_manifest_reads_back_verified(bundle):
    from edgedistill.data import eval_preprocessing
    from edgedistill.runtime import read_manifest

    path = Path(bundle["bundle"])
    manifest = read_manifest(path, verify=True).as_json()
    assert manifest == json.loads((path / "manifest.json").read_text())
    assert list(manifest["variants"]) == ["onnx_fp32", "onnx_fused_fp32", "onnx_int8", "onnx_fused_int8",
                                          "openvino_fp32", "openvino_fp16", "openvino_int8"]
    # the variant to ship: the fastest (the export's quick timing) of those within the gate
    timing = manifest["validation"]["timing"]["p50_ms"]
    assert set(timing) == set(manifest["variants"]) and min(timing.values()) > 0
    assert timing[manifest["default_variant"]] <= 1.05 * min(timing.values())
    recommended = manifest["recommended"]
    assert set(recommended) == {"onnx", "openvino"}
    for fmt, name in recommended.items():
        assert timing[name] <= 1.05 * min(t for v, t in timing.items() if manifest["variants"][v]["format"] == fmt)
    assert manifest["input"] == {"name": "pixel_values", "layout": "NCHW", "shape": [-1, 3, 16, 16],
                                 "dtype": "float32"}
    assert [(o["name"], o["dims"]) for o in manifest["outputs"]] == [("embedding", [-1, 192])]
    assert manifest["preprocessing"] == eval_preprocessing(16)
    for name, var in manifest["variants"].items():
        assert var["precision"] == name.split("_")[-1] and var["size_bytes"] > 0 and len(var["sha256"]) == 64
        if var["format"] == "openvino":
            # INT8's non-quantized ops run in bf16 where this CPU has it natively; FP32/FP16 stay f32
            expected = "bf16" if name == "openvino_int8" and cpu_has_native_bf16() else "f32"
            assert var["inference_precision_hint"] == expected and (path / var["weights_file"]).is_file()
    assert manifest["variants"]["openvino_int8"]["quantization"]["preset"] == "performance"
    int8_gate = manifest["validation"]["knn"]["variants"]["openvino_int8"]
    if cpu_has_native_bf16():  # gated at its hint and again in f32, the fallback on CPUs without bf16
        fallback = int8_gate["f32_fallback"]
        assert int8_gate["inference_precision_hint"] == "bf16" and fallback["top1"] > 0
        assert int8_gate["passed"] == (int8_gate["knn_delta"] >= -1.0 and fallback["knn_delta"] >= -1.0)
    else:
        assert "f32_fallback" not in int8_gate
    # an INT8 file is markedly smaller than the FP32 one
    assert manifest["variants"]["onnx_int8"]["size_bytes"] < 0.5 * manifest["variants"]["onnx_fp32"]["size_bytes"]
    versions = manifest["provenance"]["versions"]
    for package in ("torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "edgedistill"):
        assert versions[package]
    assert manifest["provenance"]["student"]["weights_sha256"]
    assert json.loads((path / "validation.json").read_text()) == manifest["validation"]

    # a modified file no longer verifies
    copy = path.parent / "tampered"
    shutil.copytree(path, copy)
    with open(copy / "onnx_int8.onnx", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\0" * 8)
    with pytest.raises(EdgeDistillError, match="sha256"):
        read_manifest(copy, verify=True)
    shutil.rmtree(copy)



def test_shipped_schema_is_the_model_and_the_manifest_validates_against_it(bundle):
    """``manifest.schema.json`` (shipped for apps) equals the schema generated from the typed
    model, and what export wrote validates against it with jsonschema, as an app would check it."""
    import jsonschema

    from edgedistill.runtime.manifest import SCHEMA_PATH, manifest_schema

    shipped = json.loads(SCHEMA_PATH.read_text())
    assert shipped == manifest_schema(), "regenerate: python -m edgedistill.runtime.manifest > " + str(SCHEMA_PATH)
    manifest = json.loads((Path(bundle["bundle"]) / "manifest.json").read_text())
    jsonschema.Draft202012Validator.check_schema(shipped)
    jsonschema.validate(manifest, shipped, cls=jsonschema.Draft202012Validator)
    broken = dict(manifest, variants={"onnx_fp32": dict(manifest["variants"]["onnx_fp32"], precision="int4")})
    with pytest.raises(jsonschema.ValidationError, match="int4"):
        jsonschema.validate(broken, shipped, cls=jsonschema.Draft202012Validator)

def test_parity_and_knn_figures(bundle):
    validation = bundle["manifest"]["validation"]
    assert validation["passed"] is True
    parity = validation["parity"]["variants"]
    for variant in ("onnx_fp32", "openvino_fp32"):
        figures = parity[variant]
        assert figures["gated"] and figures["passed"]
        for batch in ("batch_1", "batch_8"):
            assert figures["outputs"]["embedding"][batch]["min_cosine"] >= 0.9999
            assert figures["outputs"]["embedding"][batch]["max_abs"] < 1e-3
    for variant in ("onnx_int8", "openvino_int8", "openvino_fp16"):
        assert not parity[variant]["gated"] and parity[variant]["min_cosine"] > 0.99
    knn = validation["knn"]
    assert knn["k"] == 20 and knn["train_images"] == 30 and knn["val_images"] == 12
    reference = knn["torch_fp32"]["top1"]
    for variant, figures in knn["variants"].items():
        assert figures["knn_delta"] == pytest.approx(figures["top1"] - reference)
        assert figures["passed"]
    # FP32 variants classify exactly as torch does
    assert knn["variants"]["onnx_fp32"]["top1"] == reference
    rows = {(row["variant"], row["precision"]): row for row in bundle["rows"]}
    assert {v for v, _ in rows} == {"torch_fp32", *bundle["manifest"]["variants"]}
    assert rows[("onnx_int8", "int8")]["knn_delta"] == knn["variants"]["onnx_int8"]["knn_delta"]
    assert rows[("openvino_fp32", "fp32@f32")]["knn_delta"] == knn["variants"]["openvino_fp32"]["knn_delta"]
    if cpu_has_native_bf16():  # the f32 fallback the gate judged is a row of its own, as in bench
        fallback = knn["variants"]["openvino_int8"]["f32_fallback"]
        assert rows[("openvino_int8", "int8@f32")]["top1"] == fallback["top1"]
        assert rows[("openvino_int8", "int8@bf16")]["top1"] == knn["variants"]["openvino_int8"]["top1"]


def test_onnx_runtime_graph_has_fused_attention(bundle):
    """The ORT graphs carry one fused attention node per block (2 here), counted in the files;
    the plain graph, for every other runtime and the browser, has none. Both INT8 graphs are
    dynamic INT8 of their MatMuls and attention nodes: the patch embedding stays a float Conv."""
    import onnx

    path = Path(bundle["bundle"])
    variants = bundle["manifest"]["variants"]

    def ops(name: str) -> dict[str, int]:
        graph = onnx.load(str(path / variants[name]["file"])).graph
        counts: dict[str, int] = {}
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts

    assert ops("onnx_fused_fp32").get("Attention") == 2 and ops("onnx_fp32").get("Attention") is None
    assert variants["onnx_fused_fp32"]["runtimes"] == ["onnxruntime"]
    assert "onnxruntime-web" in variants["onnx_fp32"]["runtimes"]
    plain, fused = ops("onnx_int8"), ops("onnx_fused_int8")
    # 2 blocks x (qkv, proj, fc1, fc2) on the plain graph; the fused one's qkv is inside QAttention
    assert plain["MatMulInteger"] == 8 and fused["MatMulInteger"] == 6 and fused["QAttention"] == 2
    assert plain["Conv"] == fused["Conv"] == 1 and "ConvInteger" not in plain and "Attention" not in fused
    assert "onnxruntime-web" in variants["onnx_int8"]["runtimes"] and variants["onnx_fused_int8"]["runtimes"] == [
        "onnxruntime"]
    assert variants["onnx_fused_int8"]["graph"] == "fused attention" and variants["onnx_int8"]["graph"] == "plain"
    assert variants["onnx_fused_int8"]["quantization"]["source_graph"] == "onnx_fused_fp32"
    assert variants["onnx_int8"]["quantization"]["op_types"] == ["MatMul", "Attention"]


def test_dynamic_int8_runs_one_image_per_call_whatever_the_batch(bundle):
    """Dynamic INT8 takes each activation's range over the whole call, so a raw session's
    output for an image depends on its batch mates. The manifest declares ``batch: 1`` for
    those variants (with the measured dependence), every reader runs them one image per call,
    and ``eval knn`` gives the manifest's figure at any --batch-size."""
    from edgedistill.eval.evaluate import evaluate_knn, load_splits
    from edgedistill.eval.models import open_model
    from edgedistill.runtime import open_embedder
    from edgedistill.runtime.onnxruntime.embedder import OnnxEmbedder

    path, manifest = Path(bundle["bundle"]), bundle["manifest"]
    for name in ("onnx_int8", "onnx_fused_int8"):
        entry = manifest["variants"][name]
        dependence = entry["quantization"]["batch_dependence"]
        assert entry["batch"] == 1 and dependence["images"] == 12 and dependence["max_abs"] > 0
        assert "calibration" not in entry["quantization"] or "none" in entry["quantization"]["calibration"]
    assert all("batch" not in v for n, v in manifest["variants"].items() if n not in ("onnx_int8", "onnx_fused_int8"))

    x = np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32)
    x[0] *= 20  # a batch mate with a wide range: it coarsens everyone's activation scale
    raw = OnnxEmbedder(path / "onnx_int8.onnx", threads=1)
    alone = np.concatenate([raw.embed(x[i:i + 1]) for i in range(len(x))])
    assert np.abs(raw.embed(x) - alone).max() > 1e-4  # the raw session depends on the batch
    model = open_embedder(path, "onnx_int8", threads=1)
    assert np.array_equal(model.embed(x), alone)  # the bundle's reader does not

    data = bundle["data"]
    splits = load_splits(data=str(data), img_size=16)
    recorded = manifest["validation"]["knn"]["variants"]["onnx_int8"]["top1"]
    evaluated = open_model(path, variant="onnx_int8", threads=1)
    for batch_size in (1, 8, 32, 128):
        figures = evaluate_knn(evaluated, splits, ks=(20,), batch_size=batch_size, num_workers=0, progress=False)
        assert figures["top1"] == recorded, batch_size


def test_openvino_ir_runs_fused_attention(bundle):
    """OpenVINO's conversion turns each block's attention into one ScaledDotProductAttention
    (its CPU plugin's fused kernel), in the FP32 IR and in the NNCF INT8 IR."""
    import openvino as ov

    path = Path(bundle["bundle"])
    for name in ("openvino_fp32", "openvino_int8"):
        ops = [op.get_type_name() for op in ov.Core().read_model(str(path / f"{name}.xml")).get_ops()]
        assert ops.count("ScaledDotProductAttention") == 2, (name, sorted(set(ops)))
        assert "Softmax" not in ops


PREPROCESS = """
import json, sys
import numpy as np
from PIL import Image

bundle = sys.argv[1]
manifest = json.load(open(f"{bundle}/manifest.json"))
p = manifest["preprocessing"]
img = Image.open(f"{bundle}/{manifest['sample']['file']}").convert("RGB")
w, h = img.size
size = (p["resize"], int(p["resize"] * h / w)) if w <= h else (int(p["resize"] * w / h), p["resize"])
if size != img.size:
    img = img.resize(size, Image.Resampling.BICUBIC)
crop = p["crop"][0] if isinstance(p["crop"], list) else p["crop"]
left, top = int(round((img.width - crop) / 2)), int(round((img.height - crop) / 2))
img = img.crop((left, top, left + crop, top + crop))
x = np.asarray(img, dtype=np.float32) / np.float32(255)
x = (x - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
batch = np.repeat(x, 8, axis=0)
output = manifest["outputs"][0]["name"]
reference = np.asarray(manifest["sample"]["outputs"][output])

def cosine(a):
    return float(a @ reference / np.linalg.norm(a) / np.linalg.norm(reference))
"""

PLAIN_ORT = PREPROCESS + """
import onnxruntime as ort
result = {}
for name, var in manifest["variants"].items():
    if var["format"] == "onnx":
        session = ort.InferenceSession(f"{bundle}/{var['file']}", providers=["CPUExecutionProvider"])
        out1 = session.run([output], {manifest["input"]["name"]: x})[0]
        out8 = session.run([output], {manifest["input"]["name"]: batch})[0]
        result[name] = [cosine(out1[0]), cosine(out8[7])]
result["imported"] = sorted(m for m in ("edgedistill", "torch") if m in sys.modules)
print(json.dumps(result))
"""

PLAIN_OV = PREPROCESS + """
import openvino as ov
core = ov.Core()
result = {}
for name, var in manifest["variants"].items():
    if var["format"] == "openvino":
        model = core.read_model(f"{bundle}/{var['file']}", f"{bundle}/{var['weights_file']}")
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": var["inference_precision_hint"]})
        out1 = compiled(x)[compiled.output(output)]
        out8 = compiled(batch)[compiled.output(output)]
        result[name] = [cosine(out1[0]), cosine(out8[7])]
result["imported"] = sorted(m for m in ("edgedistill",) if m in sys.modules)
print(json.dumps(result))
"""


@pytest.mark.parametrize("script, variants", [
    (PLAIN_ORT, {"onnx_fp32": 0.9999, "onnx_fused_fp32": 0.9999, "onnx_int8": 0.99, "onnx_fused_int8": 0.99}),
    (PLAIN_OV, {"openvino_fp32": 0.9999, "openvino_fp16": 0.999, "openvino_int8": 0.99}),
], ids=["onnxruntime", "openvino"])
def test_plain_runtime_reproduces_the_sample(bundle, tmp_path, script, variants):
    """An app with only onnxruntime (or openvino), numpy and Pillow, following export/README.md."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script), bundle["bundle"]], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result.pop("imported") == []
    assert set(result) == set(variants)
    for name, floor in variants.items():
        assert min(result[name]) >= floor, (name, result[name])


# ----------------------------------------------------------------------------- options


def test_projection_output_without_data_and_force(student_run, labeled, tmp_path):
    """--projection adds the teacher-space output; without --data the accuracy gate is skipped
    (parity still runs, on the calibration folder); an existing bundle needs --force."""
    import onnxruntime as ort

    from edgedistill.export import export_bundle
    from edgedistill.runtime import read_manifest

    kwargs = dict(out_root=tmp_path, name="proj", formats="onnx", int8=False, calib=str(labeled / "val"),
                  projection=True, threads=1, progress=False)
    result = export_bundle(student_run, **kwargs)
    manifest = read_manifest(result.bundle, verify=True).as_json()
    assert [(o["name"], o["dims"]) for o in manifest["outputs"]] == [("embedding", [-1, 192]),
                                                                     ("projection", [-1, TEACHER_DIM])]
    assert manifest["provenance"]["projector"] == {"depth": 1, "student_dim": 192, "teacher_dim": TEACHER_DIM}
    assert "skipped" in manifest["validation"]["knn"]
    # no k-NN figures: the fastest FP32 variant (the parity gate holds it to torch), never INT8
    timing = manifest["validation"]["timing"]["p50_ms"]
    assert manifest["default_variant"] == manifest["recommended"]["onnx"] == min(timing, key=timing.get)
    projection = manifest["validation"]["parity"]["variants"]["onnx_fp32"]["outputs"]["projection"]
    assert projection["batch_8"]["min_cosine"] >= 0.9999
    session = ort.InferenceSession(str(result.bundle / "onnx_fp32.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding", "projection"]
    emb, proj = session.run(None, {"pixel_values": np.zeros((3, 3, 16, 16), np.float32)})
    assert emb.shape == (3, 192) and proj.shape == (3, TEACHER_DIM)

    with pytest.raises(EdgeDistillError, match="already exists.*--force"):
        export_bundle(student_run, **kwargs)
    again = export_bundle(student_run, **dict(kwargs, projection=False, formats="openvino", force=True))
    manifest = read_manifest(again.bundle, verify=True).as_json()
    assert [o["name"] for o in manifest["outputs"]] == ["embedding"]
    assert list(manifest["variants"]) == ["openvino_fp32"] and manifest["default_variant"] == "openvino_fp32"
    assert leftovers(tmp_path) == ["proj"]
    assert leftovers(tmp_path / "proj") == ["manifest.json", "openvino_fp32.bin", "openvino_fp32.xml",
                                            "sample.png", "validation.json"]  # no intermediate ONNX


def test_run_config_supplies_data_and_normalization(student_run, labeled, tmp_path):
    """Without --data, the run's own labeled data.path (where it exists) feeds both gates,
    and its data.mean/std go into the bundle's preprocessing."""
    import yaml

    from edgedistill.export import export_bundle

    run = tmp_path / "run_with_config"
    shutil.copytree(student_run, run)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"path": str(labeled), "mean": [0.5, 0.5, 0.5],
                                                              "std": [0.25, 0.25, 0.25]}}))
    result = export_bundle(run, out_root=tmp_path / "out", formats="onnx", int8=False, threads=1, progress=False)
    manifest = result.manifest.as_json()
    assert manifest["preprocessing"]["mean"] == [0.5] * 3 and manifest["preprocessing"]["std"] == [0.25] * 3
    assert manifest["validation"]["knn"]["source"] == str(labeled)
    assert manifest["validation"]["knn"]["variants"]["onnx_fp32"]["passed"]
    assert manifest["provenance"]["config"]["data"]["path"] == str(labeled)


def test_bad_inputs_are_one_line_errors(student_run, labeled, tmp_path):
    from edgedistill.export import export_bundle

    no_student = tmp_path / "empty_run"
    no_student.mkdir()
    unlabeled = tmp_path / "unlabeled"  # train/ and val/ with loose images: no classes
    for split in ("train", "val"):
        (unlabeled / split).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(unlabeled / split / f"{i}.png")
    cases = [
        (dict(model_dir=tmp_path / "nope"), "not found"),
        (dict(model_dir=no_student), "student.json"),
        (dict(model_dir=student_run, formats="onnx,tflite"), "unknown export format tflite"),
        (dict(model_dir=student_run, opset=13), "--opset"),
        (dict(model_dir=student_run, data=str(unlabeled)), "not a labeled image folder"),
        (dict(model_dir=student_run, data=str(labeled / "train")), "train/ and val/"),
        (dict(model_dir=student_run, int8=False), "needs real images"),
    ]
    for kwargs, message in cases:
        model_dir = kwargs.pop("model_dir")
        with pytest.raises(EdgeDistillError, match=message) as info:
            export_bundle(model_dir, out_root=tmp_path / "out", progress=False, **kwargs)
        assert "\n" not in str(info.value)
    assert leftovers(tmp_path / "out") == []


# ----------------------------------------------------------------------------- failures leave nothing


def test_cli_failed_gate_exits_2_and_leaves_nothing(student_run, labeled, tmp_path):
    """A cosine of exactly 1 is a valid threshold that an FP32 export misses by ~1e-13 (an
    impossible one, above 1 or a negative drop, is refused before any work: test_reliability)."""
    option, value, message = "--min-cosine", "1", "parity gate failed: onnx_fp32 cosine"
    out = tmp_path / "export"
    report = tmp_path / "report.json"
    run = run_cli("export", "--model", str(student_run), "--out", str(out), "--data", str(labeled),
                  "--formats", "onnx", "--no-int8", "--threads", "1", "--json", str(report), option, value)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert leftovers(out) == []  # no bundle, no .partial temp dir
    assert json.loads(report.read_text())["passed"] is False


def test_cli_prints_the_recommendation_and_knn_delta(student_run, labeled, tmp_path):
    """export's stdout names the variant to ship (one Recommended line per runtime: the
    manifest's choice); --json carries knn_delta = variant minus torch; --int8's help tells the
    dynamic recipe and --calib-method is gone."""
    out, report = tmp_path / "export", tmp_path / "gates.json"
    run = run_cli("export", "--model", str(student_run), "--out", str(out), "--name", "r", "--data", str(labeled),
                  "--formats", "onnx", "--int8", "--calib-size", "8", "--threads", "1", "--json", str(report))
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((out / "r" / "manifest.json").read_text())
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("Recommended")]
    assert line.startswith(f"Recommended for ONNX Runtime: {manifest['recommended']['onnx']} (")
    assert "the fastest within the 1-point k-NN gate of torch FP32" in line and "Recommended" not in run.stderr
    gates = json.loads(report.read_text())
    reference = gates["knn"]["torch_fp32"]["top1"]
    assert gates["knn"]["variants"] == manifest["validation"]["knn"]["variants"]
    for figures in gates["knn"]["variants"].values():
        assert figures["knn_delta"] == round(figures["top1"] - reference, 6) and "drop" not in figures
    help_text = " ".join(run_cli("export", "--help").stdout.split())
    assert "ONNX Runtime: dynamic INT8, no calibration" in help_text and "--calib-method" not in help_text


def test_accuracy_gate_names_each_variant_that_lost_too_much():
    from edgedistill.export.gates import knn_failures

    knn = {"onnx_int8": {"top1": 60.0, "reference_top1": 62.5, "knn_delta": -2.5},
           "openvino_int8": {"top1": 62.0, "reference_top1": 62.5, "knn_delta": -0.5}}
    (failure,) = knn_failures(knn, max_drop=1.0)
    assert failure.startswith("onnx_int8 lost 2.50") and "max 1" in failure


def test_interrupted_export_leaves_nothing(student_run, labeled, tmp_path, monkeypatch):
    import edgedistill.runtime.onnxruntime.quantize as quantize
    from edgedistill.export import export_bundle

    calls = []

    def interrupt(*args, **kwargs):
        calls.append(args[1])  # the INT8 file it was about to write, inside the temp dir
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "quantize_ort_int8", interrupt)
    (tmp_path / "export").mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_bundle(student_run, out_root=tmp_path / "export", formats="onnx", int8=True, calib=str(labeled),
                      calib_size=4, threads=1, progress=False)
    assert len(calls) == 1 and calls[0].parent.name.endswith(".partial")
    assert leftovers(tmp_path / "export") == []
