"""The torch-free runtime: preprocessing against torchvision, ONNX Runtime and OpenVINO
embedders against torch, bundle manifests, numpy k-NN, and no torch import anywhere."""

from __future__ import annotations

import json
import shutil
import warnings
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime import (
    OnnxEmbedder,
    OpenVinoEmbedder,
    knn_predict,
    open_embedder,
    preprocess,
    preprocess_batch,
    read_manifest,
    variant_path,
)
from edgedistill.utils import sha256_file

IMG = 32
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def eval_spec(img_size: int = IMG) -> dict:
    return {"resize": round(img_size * 256 / 224), "crop": img_size, "interpolation": "bicubic",
            "mean": MEAN, "std": STD, "channel_order": "RGB", "layout": "NCHW", "dtype": "float32",
            "scale": 1 / 255}


def torchvision_eval(img_size: int = IMG):
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(round(img_size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(img_size), T.ToTensor(), T.Normalize(MEAN, STD),
    ])


def natural_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Gradients, shapes and sensor-like noise: edges and smooth areas, like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1),
                     0.5 + 0.5 * np.sin((xx + yy) / 5.0)], axis=-1) * 200
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        draw.ellipse([x0, y0, x0 + width // 3 + 1, y0 + height // 3 + 1],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    if mode == "RGBA":
        img.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    elif mode == "P":
        img = img.quantize(colors=32)
    elif mode != "RGB":
        img = img.convert(mode)
    return img


# ----------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("size,mode,img_size", [
    ((37, 50), "RGB", IMG),     # odd sizes, portrait
    ((61, 23), "L", IMG),       # grayscale, landscape
    ((50, 37), "RGBA", IMG),    # alpha dropped
    ((40, 40), "P", IMG),       # palette
    ((9, 13), "RGB", IMG),      # upsampling
    ((37, 80), "RGB", IMG),     # short side already the resize size
    ((375, 500), "CMYK", 224),  # ImageNet-like, the 256/224 recipe
])
def test_preprocess_matches_torchvision_eval_transform(size, mode, img_size):
    img = natural_image(*size, seed=sum(size), mode=mode)
    ours = preprocess(img, eval_spec(img_size))
    theirs = torchvision_eval(img_size)(img.convert("RGB")).numpy()
    assert ours.shape == theirs.shape == (3, img_size, img_size) and ours.dtype == np.float32
    diff = float(np.abs(ours - theirs).max())
    # PIL does the resampling for both, and the float32 arithmetic is the same: exact match
    assert diff <= 1e-6, f"max abs difference {diff}"


def test_preprocess_paths_batches_layouts_and_padding(tmp_path):
    img = natural_image(45, 33, seed=3)
    path = tmp_path / "image.png"
    img.save(path)
    spec = eval_spec()
    batch = preprocess_batch([path, img, str(path)], spec)
    assert batch.shape == (3, 3, IMG, IMG)
    np.testing.assert_array_equal(batch[0], batch[1])
    nhwc_bgr = preprocess(img, {**spec, "layout": "NHWC", "channel_order": "BGR", "scale": "1/255"})
    np.testing.assert_array_equal(nhwc_bgr, batch[0].transpose(1, 2, 0)[..., ::-1])
    # no resize and a crop larger than the image: torchvision pads with zeros first
    from torchvision import transforms as T

    small = natural_image(20, 15, seed=4)
    ours = preprocess(small, {**spec, "resize": None, "crop": [25, 24]})
    theirs = T.Compose([T.CenterCrop((25, 24)), T.ToTensor(), T.Normalize(MEAN, STD)])(small).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_preprocess_errors(tmp_path):
    img = natural_image(40, 40, seed=5)
    with pytest.raises(EdgeDistillError, match="lacks mean"):
        preprocess(img, {"resize": 37, "crop": 32, "std": STD})
    with pytest.raises(EdgeDistillError, match="interpolation"):
        preprocess(img, {**eval_spec(), "interpolation": "cubic-spline"})
    with pytest.raises(EdgeDistillError, match="image not found"):
        preprocess(tmp_path / "missing.jpg", eval_spec())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(EdgeDistillError, match="cannot read image"):
        preprocess(broken, eval_spec())


# ----------------------------------------------------------------------------- models

class CLSEmbedding(torch.nn.Module):
    """What the export stage exports: the CLS token after the final norm."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixel_values)[:, 0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny timm ViT, its ONNX export, its OpenVINO IR and a bundle holding both."""
    import openvino as ov
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=IMG,
                              patch_size=8, embed_dim=48, depth=2, num_heads=3).eval()
    root = tmp_path_factory.mktemp("exported")
    onnx_path = root / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # timm's shape asserts, traced as constants
        torch.onnx.export(CLSEmbedding(model), (torch.randn(1, 3, IMG, IMG),), str(onnx_path), dynamo=False,
                          opset_version=18, input_names=["pixel_values"], output_names=["embedding"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
                          external_data=False)
    xml_path = root / "model.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)

    bundle = root / "bundle"
    bundle.mkdir()
    for name in ("model.onnx", "model.xml", "model.bin"):
        shutil.copy(root / name, bundle / name)
    manifest = {
        "format_version": 1,
        "name": "tiny",
        "input": {"name": "pixel_values", "layout": "NCHW", "shape": [-1, 3, IMG, IMG], "dtype": "float32"},
        "outputs": [{"name": "embedding", "dims": [-1, 48]}],
        "preprocessing": eval_spec(),
        "variants": {
            "onnx_fp32": {"file": "model.onnx", "format": "onnx", "precision": "fp32",
                          "sha256": sha256_file(bundle / "model.onnx"),
                          "size_bytes": (bundle / "model.onnx").stat().st_size},
            "openvino_fp32": {"file": "model.xml", "format": "openvino", "precision": "fp32",
                              "sha256": sha256_file(bundle / "model.xml"),
                              "weights_sha256": sha256_file(bundle / "model.bin")},
        },
        "provenance": {"test": True},
        "validation": {},
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    images = [natural_image(37 + 3 * i, 50 - 2 * i, seed=10 + i) for i in range(5)]
    pixels = preprocess_batch(images, eval_spec())
    with torch.inference_mode():
        reference = model.forward_features(torch.from_numpy(pixels))[:, 0].numpy()
    return {"model": model, "onnx": onnx_path, "xml": xml_path, "bundle": bundle, "manifest": manifest,
            "images": images, "pixels": pixels, "reference": reference}


def assert_close_embeddings(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() > 0.9999, cosine
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_embedders_match_torch_at_batch_1_and_5(exported, kind):
    if kind == "onnx":
        embedder = OnnxEmbedder(exported["onnx"], threads=1)
        assert embedder.input_name == "pixel_values" and embedder.output_name == "embedding"
    else:
        embedder = OpenVinoEmbedder(exported["xml"], threads=1)  # true fp32 by default
        assert embedder.properties["INFERENCE_PRECISION_HINT"] == "f32"
    assert embedder.dim == 48
    pixels, reference = exported["pixels"], exported["reference"]
    assert_close_embeddings(embedder.embed(pixels[:1]), reference[:1])
    assert_close_embeddings(embedder.embed(pixels), reference)
    assert_close_embeddings(embedder.embed(pixels[2:4]), reference[2:4])  # any batch size


def test_open_embedder_dispatch(exported):
    bundle = exported["bundle"]
    default = open_embedder(bundle, threads=1)
    assert isinstance(default, OnnxEmbedder) and default.name == "tiny:onnx_fp32"
    ov_embedder = open_embedder(bundle, variant="openvino_fp32", threads=1)
    assert isinstance(ov_embedder, OpenVinoEmbedder)
    assert isinstance(open_embedder(exported["onnx"]), OnnxEmbedder)
    assert isinstance(open_embedder(exported["xml"]), OpenVinoEmbedder)
    np.testing.assert_allclose(default.embed(exported["pixels"]), ov_embedder.embed(exported["pixels"]),
                               atol=1e-4)
    with pytest.raises(EdgeDistillError, match="no variant 'int8'.*onnx_fp32, openvino_fp32"):
        open_embedder(bundle, variant="int8")
    with pytest.raises(EdgeDistillError, match="cannot tell the model format"):
        open_embedder(bundle / "manifest.json")
    with pytest.raises(EdgeDistillError, match="not available"):
        OnnxEmbedder(exported["onnx"], providers=["NoSuchExecutionProvider"])
    with pytest.raises(EdgeDistillError, match="precision"):
        OpenVinoEmbedder(exported["xml"], precision="fp64")
    with pytest.raises(EdgeDistillError, match="not available"):
        OpenVinoEmbedder(exported["xml"], device="NOSUCHDEVICE")


# ----------------------------------------------------------------------------- manifest

def test_read_manifest_and_variant_path(exported):
    bundle = exported["bundle"]
    manifest = read_manifest(bundle, verify=True)
    assert manifest.name == "tiny"
    assert variant_path(manifest, bundle, "openvino_fp32") == bundle / "model.xml"
    assert variant_path(manifest, bundle) == bundle / "model.onnx"


def _bundle_copy(exported, tmp_path, edit=None) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(exported["bundle"], bundle)
    if edit is not None:
        manifest = json.loads(json.dumps(exported["manifest"]))
        edit(manifest)
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def _set(path, value):
    def edit(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set(["format_version"], 99), "format_version 99 is not supported"),
    (_set(["format_version"], KeyError), "no format_version"),
    (_set(["variants"], {}), "variants must be a non-empty object"),
    (_set(["variants", "onnx_fp32", "file"], "../model.onnx"), "must be a path inside the bundle"),
    (_set(["variants", "onnx_fp32", "format"], "tflite"), "format 'tflite' is not one of"),
    (_set(["variants", "onnx_fp32", "precision"], "int4"), "precision 'int4' is not one of"),
    (_set(["preprocessing", "mean"], KeyError), "preprocessing lacks mean"),
    (_set(["preprocessing", "crop"], 28), r"crop \[28, 28\] does not match input.shape"),
    (_set(["outputs"], []), "outputs must be a non-empty list"),
    (_set(["default_variant"], "int8"), "default_variant 'int8' is not among"),
    (_set(["recommended"], {"onnx": "openvino_fp32"}), r"recommended\['onnx'\] names 'openvino_fp32', which is no variant of format onnx"),
])
def test_manifest_validation_errors(exported, tmp_path, edit, message):
    bundle = _bundle_copy(exported, tmp_path, edit)
    with pytest.raises(EdgeDistillError, match=message):
        read_manifest(bundle)


def test_manifest_file_problems(exported, tmp_path):
    with pytest.raises(EdgeDistillError, match="bundle directory not found"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(EdgeDistillError, match="has no manifest.json"):
        read_manifest(tmp_path)
    bundle = _bundle_copy(exported, tmp_path)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(EdgeDistillError, match="not valid JSON"):
        read_manifest(bundle)
    shutil.rmtree(bundle)
    bundle = _bundle_copy(exported, tmp_path)
    (bundle / "model.bin").unlink()  # one variant's file gone: the bundle opens, that variant says what it lacks
    from edgedistill.runtime.manifest import missing_file

    manifest = read_manifest(bundle)
    lost = {name: missing_file(manifest, bundle, name) for name in manifest.variants}
    assert "model.bin" in lost.values() and None in lost.values(), lost
    shutil.rmtree(bundle)
    bundle = _bundle_copy(exported, tmp_path)
    with open(bundle / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    read_manifest(bundle)  # hashes are checked only on request
    with pytest.raises(EdgeDistillError, match="model.onnx of variant 'onnx_fp32' does not match its sha256"):
        read_manifest(bundle, verify=True)


# ----------------------------------------------------------------------------- k-NN

@pytest.mark.parametrize("features", ["clustered", "lattice"])
def test_numpy_knn_equals_torch_knn(features):
    from edgedistill.eval.knn import knn_classify

    rng = np.random.default_rng(7)
    num_classes = 6
    if features == "clustered":
        centers = rng.normal(size=(num_classes, 12))
        gallery_labels = rng.integers(0, num_classes, 300)
        gallery = centers[gallery_labels] + 1.5 * rng.normal(size=(300, 12))
        queries = centers[rng.integers(0, num_classes, 90)] + 1.5 * rng.normal(size=(90, 12))
    else:  # exact ties everywhere: cosine similarities are multiples of 0.25
        base = np.zeros((25, 12))
        for row in base:
            row[rng.choice(12, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
        gallery = base[rng.integers(0, 25, 300)]
        gallery_labels = rng.integers(0, num_classes, 300)
        queries = base[rng.integers(0, 25, 90)]
    gallery, queries = gallery.astype(np.float32), queries.astype(np.float32)
    for k in (1, 5, 20, 200, 1000):
        ours = knn_predict(gallery, gallery_labels, queries, k=k, num_classes=num_classes, chunk_size=16)
        torch_preds = knn_classify(gallery, gallery_labels, queries, num_classes, ks=(k,), headline_k=k,
                                   chunk_size=32, bank_chunk_size=50)["predictions"]
        np.testing.assert_array_equal(ours, torch_preds, err_msg=f"k={k}")


# ----------------------------------------------------------------------------- no torch

TORCH_FREE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None  # any "import torch", direct or indirect, now fails
    import numpy as np
    from PIL import Image
    import edgedistill.runtime as rt

    onnx_path, xml_path, bundle, image_path = sys.argv[1:5]
    manifest = rt.read_manifest(bundle, verify=True)
    pixels = rt.preprocess_batch([image_path, Image.open(image_path).convert("L")], manifest.preprocessing.spec)
    embedders = [rt.OnnxEmbedder(onnx_path, threads=1), rt.OpenVinoEmbedder(xml_path, threads=1),
                 rt.open_embedder(bundle), rt.open_embedder(bundle, variant="openvino_fp32")]
    outs = {e.name: e.embed(pixels).tolist() for e in embedders}
    feats = np.asarray(next(iter(outs.values())), dtype=np.float32)
    preds = rt.knn_predict(feats, np.array([0, 1]), feats, k=1).tolist()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
    print(json.dumps({"pixels": pixels.tolist(), "outs": outs, "preds": preds, "loaded": loaded,
                      "blocked": sys.modules["torch"] is None}))
""")


def test_runtime_works_without_torch(exported, tmp_path):
    image_path = tmp_path / "photo.jpg"
    exported["images"][0].save(image_path, quality=95)
    done = subprocess.run([sys.executable, "-c", TORCH_FREE_SCRIPT, str(exported["onnx"]), str(exported["xml"]),
                           str(exported["bundle"]), str(image_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["blocked"] and out["loaded"] == ["torch"]  # only the blocking placeholder
    pixels = np.asarray(out["pixels"], dtype=np.float32)
    with torch.inference_mode():
        reference = exported["model"].forward_features(torch.from_numpy(pixels))[:, 0].numpy()
    assert set(out["outs"]) == {"onnxruntime:model.onnx", "openvino-f32:model.xml", "tiny:onnx_fp32",
                                "tiny:openvino_fp32"}
    for got in out["outs"].values():
        assert_close_embeddings(np.asarray(got, dtype=np.float32), reference)
    assert out["preds"] == [0, 1]


def test_importing_runtime_loads_no_torch():
    """Even where torch is installed, the runtime (and an ONNX session) never loads it."""
    code = ("import sys, edgedistill.runtime, onnxruntime; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
