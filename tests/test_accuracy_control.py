"""Accuracy-controlled INT8: a gate that INT8 misses is met by keeping the most sensitive
layers in float, or the export fails naming what it tried.

The student is made hard to quantize on purpose: one weight per qkv and fc1 matrix is set
far outside the others, which per-tensor weight scales cannot hold together with the rest
(ONNX Runtime's dynamic INT8 then loses most of those layers); the data are six classes of
noise told apart by a weak colour shift, so the k-NN depends on fine feature detail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_ARCH
from edgedistill.errors import EdgeDistillError


def weak_classes(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in range(6):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 200, size=(20, 20, 3)).astype(np.int16)
            pixels[..., c % 3] += 30 if c < 3 else -30
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")


@pytest.fixture(scope="module")
def hard(tmp_path_factory) -> dict[str, Path]:
    from edgedistill.models.backbone_io import save_backbone
    from edgedistill.models.vit import create_vit

    root = tmp_path_factory.mktemp("hard")
    weak_classes(root / "data" / "train", 10, seed=0)
    weak_classes(root / "data" / "val", 6, seed=1)
    torch.manual_seed(0)
    model, kwargs = create_vit(TINY_ARCH, img_size=16, patch_size=4, depth=2)
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.fc1.weight[0, 0] = block.attn.qkv.weight[0, 0] = 300.0
    (root / "run").mkdir()
    save_backbone(model, root / "run", "student", TINY_ARCH, kwargs, "student")
    return {"run": root / "run", "data": root / "data"}


def test_failing_onnx_int8_gate_is_met_or_explained(hard, tmp_path):
    """Both ONNX Runtime INT8 graphs miss a zero-drop gate with every layer quantized; one layer
    in float is not enough (the export fails, naming what was tried); doubling the float layers
    meets it (the bundle records which ones and why). 2 blocks x 4 weight layers: 4 attempts
    float them all. Measured as apps run dynamic INT8, one image per call, the zero-drop gate
    (one of 36 images flips it) is met only with all 8 in float (batched, it was 2: the gate
    judged a batch-dependent figure)."""
    from edgedistill.export import export_bundle

    common = dict(out_root=tmp_path, formats="onnx", int8=True, data=str(hard["data"]), calib_size=12, threads=1,
                  progress=False, max_drop=0.0)
    with pytest.raises(EdgeDistillError, match="onnx_int8 lost") as without:
        export_bundle(hard["run"], name="plain", recovery_attempts=0, **common)
    assert "accuracy control tried" not in str(without.value) and not (tmp_path / "plain").exists()

    with pytest.raises(EdgeDistillError) as one_layer:
        export_bundle(hard["run"], name="one", recovery_attempts=1, **common)
    message = str(one_layer.value)
    for variant in ("onnx_int8", "onnx_fused_int8"):
        assert f"{variant} lost" in message and f"{variant}: kept 1 layer(s) in float" in message, message
    assert not (tmp_path / "one").exists()

    result = export_bundle(hard["run"], name="controlled", recovery_attempts=4, **common)
    manifest = result.manifest.as_json()
    knn = result.validation["knn"]["variants"]
    for variant in ("onnx_int8", "onnx_fused_int8"):  # the fused graph's INT8 (QAttention) just the same
        quantization = manifest["variants"][variant]["quantization"]
        control = quantization["accuracy_control"]
        assert control["passed"] and knn[variant]["passed"] and control["first_knn_delta"] < 0.0
        attempts = [a["float_nodes"] for a in control["attempts"]]
        assert attempts == [1, 2, 4, 8][:len(attempts)] and control["attempts"][-1]["knn_delta"] >= 0.0
        assert all(a["knn_delta"] < 0.0 for a in control["attempts"][:-1])
        assert len(control["float_layers"]) == attempts[-1] and quantization["nodes_excluded"] == control["float_layers"]
        ranked = list(control["sensitivity"].values())
        assert ranked == sorted(ranked, reverse=True)  # the most sensitive first
        assert "dropped" in control["reason"] and set(control["sensitivity"]) == set(control["float_layers"])
        assert min(control["sensitivity"].values()) > 0  # 1 - cosine, in significant digits: not rounded to 0


def _signal_stack() -> tuple[int | None, int, int] | None:
    from edgedistill.runtime.openvino.sigstack import _sigaltstack

    stack = _sigaltstack(None)
    return None if stack is None else (stack.ss_sp, stack.ss_size, stack.ss_flags)


def test_openvino_accuracy_control_keeps_layers_in_float(tiny_bundle, tmp_path):
    """NNCF's accuracy control with our metric plugged in: a metric that punishes any output
    change makes it revert layers, and the reverted ones are recorded."""
    from edgedistill.runtime.openvino.build import quantize_openvino_controlled
    from edgedistill.runtime import OpenVinoEmbedder

    bundle = Path(tiny_bundle["bundle"])
    fp32 = bundle / "openvino_fp32.xml"
    images = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    reference = OpenVinoEmbedder(fp32, threads=1).embed(images)
    items = [(image, 0) for image in images]

    def metric(compiled, data):
        out = np.concatenate([compiled(x[None])[compiled.outputs[0]] for x, _ in data])
        return 100.0 - 1e4 * float(np.abs(out - reference[:len(out)]).mean()), None

    stack_before = _signal_stack()
    settings = quantize_openvino_controlled(fp32, tmp_path / "controlled.xml", images, (items, metric),
                                            max_drop=0.5, max_layers=6)
    assert settings["tool"] == "nncf.quantize_with_accuracy_control" and settings["float_layers"]
    # NNCF swaps in a signal stack it then unmaps; left there, the next SIGCHLD or Ctrl-C was a SIGSEGV
    assert _signal_stack() == stack_before
    assert (tmp_path / "controlled.bin").is_file()


def test_accuracy_control_stops_at_its_time_bound_and_says_so(hard, tmp_path):
    """A recovery past --recovery-seconds stops (the gate's verdict stands, one line naming the
    bound); each step printed the time spent and an ETA. Before: no bound, no progress."""
    import io

    from rich.console import Console

    from edgedistill.export import export_bundle

    log = io.StringIO()
    with pytest.raises(EdgeDistillError) as stopped:
        export_bundle(hard["run"], out_root=tmp_path, name="bounded", formats="onnx", int8=True,
                      data=str(hard["data"]), calib_size=12, threads=1, progress=False, max_drop=0.0,
                      recovery_attempts=4, recovery_seconds=1e-3, console=Console(file=log, width=300))
    message, printed = str(stopped.value), log.getvalue()
    assert "onnx_int8 lost" in message and "stopped at the time bound of 0.001 s" in message, message
    assert "accuracy control: step 1/" in printed and "ETA" in printed, printed
    assert not (tmp_path / "bounded").exists()


def test_openvino_accuracy_control_embeds_the_bank_once_per_validation(tiny_bundle, tmp_path):
    """NNCF called the k-NN metric once per query image, each call embedding the whole bank
    (25 minutes on the quickstart); now the metric also returns each query's embedding, so
    NNCF ranks layers by output damage and the bank is embedded once per validation."""
    from edgedistill.runtime.base import Recovery
    from edgedistill.runtime.openvino.build import _validation, quantize_openvino_controlled

    images = np.random.default_rng(0).standard_normal((30, 3, 16, 16)).astype(np.float32)
    reads = []

    class Bank(list):
        def __getitem__(self, i):
            reads.append(i)
            return super().__getitem__(i)

    bank = Bank((image, i % 3) for i, image in enumerate(images[:20]))
    steps = []
    recovery = Recovery(check=lambda name: {}, max_drop=0.0, calibration=images[:8], attempts=1, bank=bank,
                        queries=[(image, i % 3) for i, image in enumerate(images[20:])], num_classes=3,
                        progress=lambda done, total, note: steps.append((done, total)))
    queries, metric, on_item = _validation(recovery, total=6)
    quantize_openvino_controlled(Path(tiny_bundle["bundle"]) / "openvino_fp32.xml", tmp_path / "int8.xml",
                                 images[:8], (queries, metric), max_drop=0.0, max_layers=4, on_item=on_item)
    assert (1, 6) in steps  # FP32, then INT8, then one per reverted group
    passes = len(reads) / len(bank) - 20 / len(bank)  # the labels are read once
    validations = max(done for done, _ in steps)
    assert passes <= validations + 1, (passes, steps)  # + NNCF's probe of one item


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="ExecuTorch is not installed")
def test_a_failed_variant_without_accuracy_control_fails_before_the_long_step(hard, tmp_path):
    """ExecuTorch INT8 has no accuracy control: when it fails, recovering the others cannot
    change the verdict, so none is tried (before: the ONNX Runtime and OpenVINO recoveries ran
    first, 17 minutes on the quickstart, and the export failed anyway)."""
    from edgedistill.export import export_bundle

    black = tmp_path / "black"
    black.mkdir()
    for i in range(12):
        Image.new("RGB", (20, 20)).save(black / f"{i}.png")
    with pytest.raises(EdgeDistillError) as failed:
        export_bundle(hard["run"], out_root=tmp_path, name="hopeless", formats="onnx,executorch", int8=True,
                      data=str(hard["data"]), calib=str(black), calib_size=12, threads=1, progress=False,
                      max_drop=0.0, recovery_attempts=4)
    message = str(failed.value)
    assert "onnx_int8 lost" in message and "executorch_int8 lost" in message, message
    assert "executorch_int8 has no accuracy control: none was tried" in message, message
    assert "accuracy control tried" not in message and not (tmp_path / "hopeless").exists()
