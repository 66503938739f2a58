"""``edgedistill eval`` (k-NN over torch and ONNX, linear probe, attention maps), ``--model``
resolution and its errors, and online k-NN in one process and under torchrun (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import REPO, make_image_folder, run_cli

IMG, PATCH = 16, 4


class CLSEmbedding(torch.nn.Module):
    """What the export writes: the CLS token after the final norm."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)[:, 0]


def export_onnx(model: torch.nn.Module, path: Path, img: int) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # timm's shape asserts, harmless here
        torch.onnx.export(CLSEmbedding(model.eval()), (torch.randn(2, 3, img, img),), str(path), dynamo=False,
                          opset_version=18, input_names=["pixel_values"], output_names=["embedding"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
                          external_data=False)
    return path


def tiny_student(seed: int = 0, img: int = IMG, patch: int = PATCH):
    from edgedistill.models import create_vit

    torch.manual_seed(seed)
    return create_vit("vit_tiny_patch16_224", img, patch, depth=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A labeled split layout: 2 classes, 16 train + 8 val PNGs each, 16 px."""
    root = tmp_path_factory.mktemp("evaldata")
    make_image_folder(root / "train", classes=2, per_class=16, size=IMG, seed=0)
    make_image_folder(root / "val", classes=2, per_class=8, size=IMG, seed=1)
    return root


@pytest.fixture(scope="module")
def student_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run directory holding student.safetensors + student.json, and the student's ONNX export."""
    from edgedistill.models import save_backbone

    run = tmp_path_factory.mktemp("run")
    model, kwargs = tiny_student()
    save_backbone(model, run, "student", "vit_tiny_patch16_224", kwargs, role="student")
    onnx_dir = tmp_path_factory.mktemp("onnx")
    return run, export_onnx(model, onnx_dir / "student.onnx", IMG)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# ----------------------------------------------------------------------------- eval knn


def test_knn_cli_torch_and_onnx_agree(student_run, data, tmp_path):
    run, onnx = student_run
    from edgedistill.cli import main

    results = {}
    for name, model in (("torch", run), ("onnx", onnx)):
        out = tmp_path / f"{name}.json"
        args = ["eval", "knn", "--model", str(model), "--data", str(data), "--k", "1,5,20", "--workers", "0",
                "--batch-size", "7", "--json", str(out), "--predictions", "--no-progress"]
        if name == "torch":  # the real command line once; in process for the second backend
            proc = run_cli(*args)
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        else:
            res = CliRunner().invoke(main, args)
            code, stdout, stderr = res.exit_code, res.stdout, res.stderr
        assert code == 0, stderr
        assert "top-1" in stdout and "img/s" in stdout
        results[name] = json.loads(out.read_text())
    t, o = results["torch"], results["onnx"]
    assert t["model"]["backend"] == "torch" and o["model"]["backend"] == "onnxruntime"
    assert t["predictions"] == o["predictions"] and len(t["predictions"]) == 16
    assert t["per_k"] == o["per_k"]
    # JSON contents
    assert t["task"] == "knn" and t["ks"] == [1, 5, 20] and t["headline_k"] == 20
    assert t["data"]["num_train"] == 32 and t["data"]["num_val"] == 16
    assert t["data"]["classes"] == ["class_0", "class_1"]
    assert t["top1"] == t["per_k"]["20"]["top1"] and 0 <= t["top1"] <= 100
    assert t["top5"] is None  # 2 classes
    assert t["per_k"]["20"]["k_used"] == 20
    assert t["model"]["preprocessing"]["crop"] == [IMG, IMG] and t["model"]["dim"] == 192
    e = t["extraction"]
    assert e["images"] == 48 and e["images_per_s"] > 0 and e["model_images_per_s"] >= e["images_per_s"]


def test_knn_python_api_train_val_folders(student_run, data):
    """--train/--val spelled out give what --data gives; the embedded digits load too."""
    from edgedistill.eval import evaluate_knn, load_splits, open_model

    model = open_model(student_run[0], device="cpu")
    by_data = evaluate_knn(model, load_splits(data=str(data)), ks=(3,), num_workers=0, progress=False,
                           with_predictions=True)
    by_pair = evaluate_knn(model, load_splits(str(data / "train"), str(data / "val")), ks=(3,),
                           num_workers=0, progress=False, with_predictions=True)
    assert by_data["predictions"] == by_pair["predictions"]
    assert by_data["headline_k"] == 3  # 20 not asked for: the first k is the headline
    digits = load_splits(data="digits", img_size=IMG)
    assert len(digits.bank) == 1438 and len(digits.query) == 359


def test_knn_cli_bad_inputs(student_run, data, tmp_path):
    run, _ = student_run
    missing = one_error_line(run_cli("eval", "knn", "--model", str(tmp_path / "nope.onnx"), "--data", str(data)))
    assert "not found" in missing
    (tmp_path / "weights.txt").write_text("hello")
    unknown = one_error_line(run_cli("eval", "knn", "--model", str(tmp_path / "weights.txt"), "--data", str(data)))
    assert "cannot tell the model format" in unknown
    unlabeled = make_image_folder(tmp_path / "unlabeled", classes=1, per_class=4, size=IMG, labeled=False)
    # loose images at the top level: unlabeled
    for p in list((unlabeled / "part_0").iterdir()):
        p.rename(unlabeled / p.name)
    # in process (torch is loaded already); the same _Group turns the error into one line
    from edgedistill.cli import main

    res = CliRunner().invoke(main, ["eval", "knn", "--model", str(run), "--train", str(data / "train"),
                                    "--val", str(unlabeled), "--workers", "0"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a labeled image folder" in lines[0]


def test_open_model_errors(student_run, data, tmp_path):
    from edgedistill.errors import EdgeDistillError
    from edgedistill.eval import load_splits, open_model

    run, onnx = student_run
    with pytest.raises(EdgeDistillError, match="needs a bundle directory"):
        open_model(onnx, variant="fp32")
    with pytest.raises(EdgeDistillError, match="holds no saved backbone"):
        open_model(tmp_path)
    (tmp_path / "ckpt.pth").write_bytes(b"x")
    with pytest.raises(EdgeDistillError, match="--arch"):
        open_model(tmp_path / "ckpt.pth")
    with pytest.raises(EdgeDistillError, match="contradicts"):
        open_model(onnx, img_size=32)
    with pytest.raises(EdgeDistillError, match="not both"):
        load_splits(str(data), str(data), str(data))
    with pytest.raises(EdgeDistillError, match="no train/ and val/"):
        load_splits(train=str(data / "train"))
    model = open_model("random", arch="vit_tiny_patch16_224", img_size=IMG, patch_size=PATCH, depth=1)
    assert model.backend == "torch" and model.img_size == IMG and len(model.module.blocks) == 1


def test_bundle_model_uses_manifest_preprocessing(student_run, tmp_path):
    """A bundle directory (and an .onnx inside one) takes the manifest's preprocessing."""
    import shutil

    from edgedistill.eval import open_model
    from edgedistill.utils import sha256_file

    _, onnx = student_run
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(onnx, bundle / "model.onnx")
    manifest = {
        "format_version": 1, "name": "tiny",
        "input": {"name": "pixel_values", "layout": "NCHW", "shape": [-1, 3, IMG, IMG], "dtype": "float32"},
        "outputs": [{"name": "embedding", "dims": [-1, 192]}],
        "preprocessing": {"resize": 20, "crop": IMG, "interpolation": "bilinear", "mean": [0.5] * 3,
                          "std": [0.25] * 3},
        "variants": {"fp32": {"file": "model.onnx", "format": "onnx", "precision": "fp32",
                              "sha256": sha256_file(bundle / "model.onnx")}},
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for model in (open_model(bundle, variant="fp32"), open_model(bundle / "model.onnx")):
        assert model.backend == "onnxruntime"
        assert model.preprocessing["resize"] == 20 and model.preprocessing["mean"] == [0.5] * 3
    assert open_model(bundle).info["variant"] == "fp32"


# ----------------------------------------------------------------------------- linear, attention


def test_linear_probe_above_chance(student_run, data, tmp_path):
    from edgedistill.cli import main

    out = tmp_path / "linear.json"
    res = CliRunner().invoke(main, ["eval", "linear", "--model", str(student_run[0]), "--data", str(data),
                                    "--workers", "0", "--no-progress", "--json", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["task"] == "linear" and result["C"] in (0.1, 1.0, 10.0, 100.0)
    assert result["top1"] > 75.0  # chance is 50: the dominant colour separates the classes
    assert set(result["c_search"]) == {"0.1", "1", "10", "100"}


def test_attention_png(student_run, data, tmp_path):
    from PIL import Image

    from edgedistill.cli import main
    from edgedistill.models import save_backbone

    # a teacher with more heads and a finer grid than the student: 6 heads, patch 2
    from edgedistill.models import create_vit

    torch.manual_seed(1)
    teacher, kwargs = create_vit("vit_small_patch16_224", IMG, 2, depth=2)
    save_backbone(teacher, tmp_path / "teacher_run", "teacher", "vit_small_patch16_224", kwargs, role="teacher")
    images = sorted((data / "val" / "class_0").iterdir())[:2]
    out = tmp_path / "attn.png"
    res = CliRunner().invoke(main, ["eval", "attention", "--model", str(student_run[0]),
                                    "--teacher", str(tmp_path / "teacher_run"), "--images", str(images[0]),
                                    str(images[1]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as png:
        png.load()
        width, height = png.size
    # 4 rows (2 images x teacher/student) of 2 + 6 columns, 160 px per cell
    assert 1000 <= width <= 1600 and 500 <= height <= 800


def test_attention_maps_are_distributions(student_run):
    from edgedistill.eval.attention import cls_attention_maps
    from edgedistill.eval import open_model

    model = open_model(student_run[0], device="cpu")
    model.module.train()
    heads, fused = cls_attention_maps(model.module, torch.randn(3, 3, IMG, IMG))
    assert model.module.training
    assert heads.shape == (3, 3, 4, 4) and fused.shape == (3, 4, 4)
    assert torch.allclose(torch.from_numpy(heads.sum(axis=(2, 3))), torch.ones(3, 3), atol=1e-5)


# ----------------------------------------------------------------------------- online k-NN


def tiny_config(data: Path, **extra):
    from edgedistill.config import build_config

    values = {"data.path": str(data), "data.img_size": IMG, "data.num_workers": 0, "eval.batch_size": 5}
    values.update(extra)
    return build_config(overrides=[f"{k}={v}" for k, v in values.items()])


def test_online_knn_single_process(student_run, data):
    from edgedistill.eval.evaluate import evaluate_knn, load_splits
    from edgedistill.eval.models import open_model
    from edgedistill.eval.online import clear_online_cache, online_knn
    from edgedistill.distributed import DistInfo

    clear_online_cache()
    model = open_model(student_run[0], device="cpu")
    backbone = model.module
    backbone.train()
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    scores = online_knn(backbone, tiny_config(data), info)
    assert backbone.training  # train mode restored
    assert set(scores) == {"knn_top1"}  # 2 classes: no top-5
    assert 0.0 <= scores["knn_top1"] <= 100.0
    offline = evaluate_knn(model, load_splits(data=str(data)), ks=(20,), num_workers=0, progress=False)
    assert scores["knn_top1"] == pytest.approx(offline["top1"], abs=1e-9)
    # cached: a second call gives the same figure without rescanning
    assert online_knn(backbone, tiny_config(data), info) == scores


def test_online_knn_skips_unlabeled_data(tmp_path):
    from edgedistill.eval.online import clear_online_cache, online_knn

    clear_online_cache()
    folder = make_image_folder(tmp_path / "flat", classes=1, per_class=4, size=IMG, labeled=False)
    backbone, _ = tiny_student()
    with pytest.warns(UserWarning, match="online k-NN skipped"):
        assert online_knn(backbone, tiny_config(folder)) == {}
    assert online_knn(backbone, tiny_config(folder)) == {}  # warned once, still skipped


def mixed_data(root: Path) -> Path:
    """5 classes where 0/3 and 1/4 share a dominant colour (k-NN top-1 neither 0 nor 100), with
    odd counts (45 train, 25 val) so the two ranks hold shards of different sizes."""
    make_image_folder(root / "mixed" / "train", classes=5, per_class=9, size=IMG, seed=2)
    make_image_folder(root / "mixed" / "val", classes=5, per_class=5, size=IMG, seed=3)
    return root / "mixed"


DDP_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from edgedistill.config import build_config
    from edgedistill.eval.online import online_knn
    from edgedistill.models import load_backbone
    from edgedistill import distributed as distmod

    run, data, out = sys.argv[1:4]
    torch.set_num_threads(1)
    info = distmod.setup("cpu")
    cfg = build_config(overrides=[f"data.path={data}", "data.img_size=16", "data.num_workers=0",
                                  "eval.batch_size=5"])
    model, _ = load_backbone(run)
    model.train()
    scores = online_knn(model, cfg, info)
    assert model.training
    # offline k-NN under torchrun: sharded extraction, banks gathered in dataset order
    from edgedistill.eval import evaluate_knn, load_splits, open_model
    offline = evaluate_knn(open_model(run, device="cpu"), load_splits(data=data), ks=(5, 20), num_workers=0,
                           progress=False, with_predictions=True)
    with open(f"{out}.{info.rank}", "w") as f:
        json.dump({"world": info.world_size, **scores, "offline": offline}, f)
    distmod.teardown()
""")


def test_online_and_offline_knn_torchrun_equal_single_process(student_run, data, tmp_path):
    from edgedistill.eval.online import clear_online_cache, online_knn
    from edgedistill.models import load_backbone
    from edgedistill.distributed import DistInfo

    mixed = mixed_data(tmp_path)
    script = tmp_path / "ddp_knn.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "scores"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(student_run[0]), str(mixed), str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    clear_online_cache()
    model, _ = load_backbone(student_run[0])
    single = online_knn(model, tiny_config(mixed), DistInfo(0, 1, 0, torch.device("cpu")))
    assert set(single) == {"knn_top1", "knn_top5"} and 0 < single["knn_top1"] < 100
    from edgedistill.eval import evaluate_knn, load_splits, open_model

    offline = evaluate_knn(open_model(student_run[0], device="cpu"), load_splits(data=str(mixed)), ks=(5, 20),
                           num_workers=0, progress=False, with_predictions=True)
    for r in ranks:
        assert r["knn_top1"] == pytest.approx(single["knn_top1"], abs=1e-9)
        assert r["knn_top5"] == pytest.approx(single["knn_top5"], abs=1e-9)
        assert r["offline"]["predictions"] == offline["predictions"]
        assert r["offline"]["per_k"] == offline["per_k"]
        assert r["offline"]["extraction"]["images"] == 45 + 25  # both ranks' shards counted


# ----------------------------------------------------------------------------- CIFAR (development machine)


def test_cifar_torch_and_onnx_knn_within_0_1_point(cifar_subset, tmp_path):
    """A random-init tiny student (32 px, patch 4, depth 2) and its ONNX FP32 export give the
    same k-NN top-1 within 0.1 point on 1000 train / 500 val CIFAR images."""
    from edgedistill.data import ImageFolderDataset
    from edgedistill.eval import Splits, evaluate_knn, open_model
    from edgedistill.models import save_backbone

    model, kwargs = tiny_student(img=32, patch=4)
    save_backbone(model, tmp_path, "student", "vit_tiny_patch16_224", kwargs, role="student")
    onnx = export_onnx(model, tmp_path / "student.onnx", 32)
    # every 10th bank image and every 4th query: all 10 classes, 100 + 50 of each (scan=False:
    # verifying all 12,000 files up front would take longer than the test itself)
    splits = Splits(ImageFolderDataset(cifar_subset / "train", scan=False, require_labels=True),
                    ImageFolderDataset(cifar_subset / "val", scan=False, require_labels=True), 32)
    for ds, step in ((splits.bank, 10), (splits.query, 4)):
        ds.paths, ds.labels = ds.paths[::step], ds.labels[::step]
    assert len(splits.bank) == 1000 and len(splits.query) == 500
    torch_res = evaluate_knn(open_model(tmp_path, device="cpu"), splits, num_workers=0, progress=False,
                             batch_size=250)
    onnx_res = evaluate_knn(open_model(onnx), splits, num_workers=0, progress=False, batch_size=250)
    for k in ("10", "20", "100", "200"):
        assert abs(torch_res["per_k"][k]["top1"] - onnx_res["per_k"][k]["top1"]) <= 0.1, k
    assert torch_res["top1"] > 15.0  # above the 10% chance level even at random init


def test_random_model_baseline_is_seeded():
    """`--model random` is a reproducible baseline: the same --seed gives the same weights."""
    from edgedistill.cli.eval import _open

    def weights(seed: int) -> torch.Tensor:
        opts = {"model": "random", "variant": None, "device": "cpu", "threads": None, "arch": "vit_tiny_patch16_224",
                "img_size": IMG, "patch_size": PATCH, "depth": 1, "seed": seed}
        torch.manual_seed(1234)  # whatever the process did before
        return torch.cat([p.detach().flatten() for p in _open(opts).module.parameters()])

    assert torch.equal(weights(3), weights(3)) and not torch.equal(weights(3), weights(4))
