"""deploy_examples/: each example, run as an app would run it, against ``edgedistill eval`` and
the torch-free runtime on the same images and the same tiny bundle.

- python_onnxruntime / python_openvino: subprocesses with torch made unimportable (they run
  on the torch-free ``edgedistill.runtime``); labels equal eval's k-NN predictions, variant by
  variant.
- cpp_openvino: built with CMake against the openvino wheel (skipped without cmake, g++ or
  nlohmann-json3-dev); embeddings equal the runtime's, labels equal.
- web: served by serve.py on 127.0.0.1, driven by playwright-core in headless Chromium
  (skipped without chromium/node/npm packages: .ci/install-deploy-deps.sh installs them);
  labels read off the page equal the runtime's; a screenshot is saved.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "deploy_examples"
WEB = EXAMPLES / "web"
ARCH = "vit_tiny_patch16_224"
# torch unimportable: the examples must run on a device with only the torch-free runtime.
GUARD = ("import runpy, sys\n"
         "for name in ('torch', 'torchvision', 'timm'):\n"
         "    sys.modules[name] = None\n"
         "script = sys.argv[1]\n"
         "sys.argv = sys.argv[1:]\n"
         "sys.path.insert(0, __import__('os').path.dirname(script))\n"
         "runpy.run_path(script, run_name='__main__')\n")


def _colored(rng: np.random.Generator, width: int, height: int, channel: int) -> np.ndarray:
    pixels = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    pixels[..., channel] += np.uint8(120)
    return pixels


@pytest.fixture(scope="session")
def deploy(tiny_bundle, tmp_path_factory) -> dict:
    """conftest's tiny bundle (every variant), its labeled data, and query images that exercise
    the preprocessing (sizes around the crop, grey, RGBA, JPEG, unique names)."""
    root = tmp_path_factory.mktemp("deploy")
    data, result = tiny_bundle["data"], tiny_bundle
    queries = root / "queries"
    queries.mkdir()
    for src in sorted((data / "val").glob("*/*.png")):
        shutil.copy(src, queries / f"{src.parent.name}_{src.name}")
    rng = np.random.default_rng(7)
    # (w, h): wide, tall (Pillow 13 resizes it vertical pass first), smaller than the resize, exact
    for i, (w, h) in enumerate([(40, 26), (24, 70), (11, 13), (18, 18)]):
        Image.fromarray(_colored(rng, w, h, i % 3)).save(queries / f"size_{w}x{h}.png")
    Image.fromarray(_colored(rng, 30, 30, 1)).convert("L").save(queries / "grey.png")
    rgba = np.dstack([_colored(rng, 25, 25, 2), np.full((25, 25), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(queries / "rgba.png")
    Image.fromarray(_colored(rng, 32, 28, 0)).save(queries / "photo.jpg", quality=92)
    return {"bundle": Path(result["bundle"]), "data": data, "queries": queries, "root": root,
            "manifest": result["manifest"]}


def run_python_example(kind: str, *args: str) -> subprocess.CompletedProcess:
    script = EXAMPLES / kind / "classify.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", GUARD, str(script), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def classify_json(kind: str, bundle: Path, gallery: Path, images: list, *extra: str) -> dict:
    proc = run_python_example(kind, "--bundle", str(bundle), "--gallery", str(gallery), "--images",
                              *map(str, images), "--threads", "1", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def runtime_predictions(deploy: dict, variant: str, images: list[Path], k: int = 20) -> dict[str, str]:
    """path -> label through edgedistill.runtime: its preprocessing, embedder and k-NN."""
    from edgedistill.data.folders import scan_folder
    from edgedistill.runtime import knn_predict, open_embedder, preprocess_batch

    spec = deploy["manifest"]["preprocessing"]
    embedder = open_embedder(deploy["bundle"], variant, threads=1)
    paths, labels, classes = scan_folder(deploy["data"] / "train", require_labels=True)
    bank = embedder.embed(preprocess_batch(paths, spec))
    feats = np.concatenate([embedder.embed(preprocess_batch([p], spec)) for p in images])
    preds = knn_predict(bank, np.array(labels), feats, k=k, num_classes=len(classes))
    return {str(p): classes[i] for p, i in zip(images, preds)}


def eval_predictions(deploy: dict, variant: str) -> dict[str, str]:
    """val path -> label from ``edgedistill eval knn`` (its Python entry) at k = 20."""
    from edgedistill.eval.evaluate import evaluate_knn, load_splits
    from edgedistill.eval.models import open_model

    model = open_model(str(deploy["bundle"]), variant=variant, threads=1)
    splits = load_splits(data=str(deploy["data"]), img_size=16)
    result = evaluate_knn(model, splits, ks=[20], num_workers=0, progress=False, with_predictions=True, threads=1)
    return {str(Path(p)): splits.classes[i] for p, i in zip(splits.query.paths, result["predictions"])}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ----------------------------------------------------------------------------- Python examples


def test_python_examples_are_the_torch_free_runtime():
    """One source: each example imports only the standard library and edgedistill.runtime
    (whose own torch-freeness test_runtime.py checks)."""
    for kind in ("python_onnxruntime", "python_openvino"):
        tree = ast.parse((EXAMPLES / kind / "classify.py").read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        outside = {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names}
        assert outside == {"edgedistill.runtime.app"}, f"{kind}/classify.py imports {outside}"
        assert not list((EXAMPLES / kind).glob("*.py"))[1:], f"{kind} holds more than classify.py"


@pytest.mark.parametrize("kind,variants", [("python_onnxruntime", ["onnx_fp32", "onnx_int8"]),
                                           ("python_openvino", ["openvino_fp32", "openvino_int8"])])
def test_python_example_labels_equal_eval(deploy, kind, variants):
    val = deploy["data"] / "val"
    for variant in variants:
        out = classify_json(kind, deploy["bundle"], deploy["data"] / "train", [val], "--variant", variant)
        assert out["variant"] == variant
        got = {str(Path(p["path"])): p["label"] for p in out["predictions"]}
        assert got == eval_predictions(deploy, variant), variant
    # no --variant: the one the manifest recommends for this runtime's format
    out = classify_json(kind, deploy["bundle"], deploy["data"] / "train", [val])
    fmt = "onnx" if kind == "python_onnxruntime" else "openvino"
    assert out["variant"] == deploy["manifest"]["recommended"][fmt]


def test_python_onnxruntime_odd_images_k_and_cache(deploy):
    images = sorted(deploy["queries"].iterdir())
    gallery = deploy["root"] / "gallery_cached"
    shutil.copytree(deploy["data"] / "train", gallery)
    for k in (20, 3):
        ref = runtime_predictions(deploy, "onnx_fp32", images, k=k)
        args = ["--bundle", str(deploy["bundle"]), "--gallery", str(gallery), "--images", str(deploy["queries"]),
                "--variant", "onnx_fp32", "--k", str(k), "--cache", "--threads", "1"]
        first = run_python_example("python_onnxruntime", *args)
        assert first.returncode == 0, first.stderr
        assert len(list(gallery.glob(".embeddings-*.npz"))) == 1  # cached: model hash + image list
        lines = dict(line.split("\t") for line in first.stdout.splitlines())
        assert lines == ref
        second = run_python_example("python_onnxruntime", *args)  # from the cache
        assert second.stdout == first.stdout
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(gallery / "class_0" / "new.png")
    run_python_example("python_onnxruntime", *args)
    assert len(list(gallery.glob(".embeddings-*.npz"))) == 2  # a changed gallery is a new key


def test_python_examples_fail_with_one_line(deploy, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(loose / "a.png")
    cases = [(["--bundle", str(tmp_path)], "is not a bundle"),
             (["--bundle", str(deploy["bundle"]), "--variant", "openvino_fp32"], "this app runs onnx"),
             (["--bundle", str(deploy["bundle"]), "--gallery", str(loose)], "one subfolder per class"),
             (["--bundle", str(deploy["bundle"]), "--images", str(tmp_path / "missing.png")], "image not found")]
    for args, message in cases:
        full = {"--gallery": str(deploy["data"] / "train"), "--images": str(loose / "a.png")}
        for i in range(0, len(args), 2):
            full[args[i]] = args[i + 1]
        proc = run_python_example("python_onnxruntime", *[x for kv in full.items() for x in kv])
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ----------------------------------------------------------------------------- C++ / OpenVINO


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory) -> dict:
    """The C++ example built with CMake; ``stb`` says whether the build found stb_image.h
    (PNG/JPEG decoding) or reads PPM/PGM only, as it does on a machine without libstb-dev."""
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if not any(Path(root, "nlohmann", "json.hpp").is_file() for root in ("/usr/include", "/usr/local/include")):
        missing.append("nlohmann-json3-dev")
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (run .ci/install-deploy-deps.sh): C++ example not built")
    import openvino

    build = tmp_path_factory.mktemp("cpp_build")
    ov_dir = Path(openvino.__file__).parent / "cmake"
    for cmd in (["cmake", "-S", str(EXAMPLES / "cpp_openvino"), "-B", str(build), f"-DOpenVINO_DIR={ov_dir}",
                 "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build), "-j", str(min(4, os.cpu_count() or 1))]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cache = (build / "CMakeCache.txt").read_text()
    stb = any(line.startswith("STB_IMAGE_INCLUDE_DIR:") and not line.endswith("-NOTFOUND")
              for line in cache.splitlines())
    return {"binary": build / "edgedistill_embed", "stb": stb}


def as_ppm(images: list[Path], folder: Path) -> dict[Path, Path]:
    """Each image decoded by the runtime (EXIF, RGB) and written as binary PPM, which every
    build of the C++ example reads: the same pixels whatever decoder the build has."""
    from edgedistill.runtime import load_rgb

    out = {}
    for i, path in enumerate(images):
        target = folder / path.parent.name / f"{i:03d}_{path.stem}.ppm"
        target.parent.mkdir(parents=True, exist_ok=True)
        load_rgb(path).save(target, format="PPM")
        out[path] = target
    return out


def run_cpp(cpp_build: dict, deploy: dict, gallery_json: Path, images: list[Path]) -> dict[str, dict]:
    proc = subprocess.run([str(cpp_build["binary"]), "--bundle", str(deploy["bundle"]), "--variant", "openvino_fp32",
                           "--gallery", str(gallery_json), "--threads", "1", "--json", *map(str, images)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {r["path"]: r for r in json.loads(proc.stdout)["results"]}


@pytest.fixture(scope="session")
def openvino_gallery(deploy) -> Path:
    gallery_json = deploy["root"] / "gallery_openvino.json"
    proc = run_python_example("python_openvino", "--bundle", str(deploy["bundle"]), "--gallery",
                              str(deploy["data"] / "train"), "--variant", "openvino_fp32", "--gallery-json",
                              str(gallery_json), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    return gallery_json


def test_cpp_openvino_embeddings_and_labels(cpp_build, deploy, openvino_gallery, tmp_path):
    """Every build (with or without stb_image): PPM input, embeddings exactly the runtime's."""
    from edgedistill.runtime import open_embedder, preprocess_batch

    images = sorted(deploy["queries"].iterdir()) + sorted((deploy["data"] / "val").glob("*/*.png"))
    ppm = as_ppm(images, tmp_path / "ppm")
    got = run_cpp(cpp_build, deploy, openvino_gallery, list(ppm.values()))

    # the same pixels, the same tensor, the same OpenVINO: the runtime's embedding exactly
    embedder = open_embedder(deploy["bundle"], "openvino_fp32", threads=1)
    spec = deploy["manifest"]["preprocessing"]
    ref = np.concatenate([embedder.embed(preprocess_batch([p], spec)) for p in images])
    mine = np.array([got[str(ppm[p])]["embedding"] for p in images], np.float32)
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-5)

    labels = {str(p): got[str(ppm[p])]["label"] for p in images}
    assert labels == runtime_predictions(deploy, "openvino_fp32", images)
    val = {p: labels[p] for p in map(str, images) if "/val/" in p}
    assert val == eval_predictions(deploy, "openvino_fp32")

    # plain output and a one-line error
    first = str(ppm[images[0]])
    plain = subprocess.run([str(cpp_build["binary"]), "--bundle", str(deploy["bundle"]), first],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and len(plain.stdout.split("\t")[1].split(",")) == 192
    bad = subprocess.run([str(cpp_build["binary"]), "--bundle", str(deploy["root"]), first],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


def test_cpp_openvino_decodes_png_and_jpeg(cpp_build, deploy, openvino_gallery):
    """With stb_image.h: PNG decodes to Pillow's pixels exactly; stb's JPEG decoder is not
    libjpeg's, so JPEG gets a tolerance. Without it: a one-line error naming libstb-dev."""
    from edgedistill.runtime import open_embedder, preprocess_batch

    images = sorted(deploy["queries"].iterdir())
    if not cpp_build["stb"]:
        proc = subprocess.run([str(cpp_build["binary"]), "--bundle", str(deploy["bundle"]), str(images[0])],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "libstb-dev" in proc.stderr, proc.stderr
        pytest.skip("stb_image.h not found (apt install libstb-dev): this C++ build reads PPM/PGM only")
    got = run_cpp(cpp_build, deploy, openvino_gallery, images)
    embedder = open_embedder(deploy["bundle"], "openvino_fp32", threads=1)
    spec = deploy["manifest"]["preprocessing"]
    ref = np.concatenate([embedder.embed(preprocess_batch([p], spec)) for p in images])
    mine = np.array([got[str(p)]["embedding"] for p in images], np.float32)
    png = np.array([p.suffix == ".png" for p in images])
    np.testing.assert_allclose(mine[png], ref[png], rtol=0, atol=1e-5)
    assert cosines(mine[~png], ref[~png]).min() > 0.999
    assert {p: r["label"] for p, r in got.items()} == runtime_predictions(deploy, "openvino_fp32", images)


# ----------------------------------------------------------------------------- web


def web_ready() -> str | None:
    """Why the browser test cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        return f"no Chromium at {chromium}"
    for package in ("onnxruntime-web/dist/ort.wasm.min.mjs", "playwright-core/package.json"):
        if not (WEB / "node_modules" / package).exists():
            return f"npm packages missing ({package}): run `npm ci` in {WEB}"
    return None


@pytest.fixture
def web_server(deploy):
    gallery_json = deploy["root"] / "gallery_onnx.json"
    proc = run_python_example("python_onnxruntime", "--bundle", str(deploy["bundle"]), "--gallery",
                              str(deploy["data"] / "train"), "--variant", "onnx_fp32", "--gallery-json",
                              str(gallery_json), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    server = subprocess.Popen([sys.executable, str(WEB / "serve.py"), "--bundle", str(deploy["bundle"]),
                               "--gallery-json", str(gallery_json), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + server.stderr.read()
        yield line.split()[1]
    finally:
        server.terminate()
        server.wait(timeout=10)


def drive_page(url: str, images: list[Path], out: Path, screenshot: Path | None = None, mode: str = "pil") -> dict:
    cmd = ["node", str(WEB / "e2e.mjs"), "--url", url, "--out", str(out), "--mode", mode]
    if screenshot is not None:
        cmd += ["--screenshot", str(screenshot)]
    cmd += [str(p) for p in images]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=WEB)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_web_page_classifies_picked_images(tmp_path, request):
    why = web_ready()
    if why:
        pytest.skip(f"browser example not run: {why} (.ci/install-deploy-deps.sh installs what it needs)")
    deploy = request.getfixturevalue("deploy")  # after the skip: no export when it cannot run
    url = request.getfixturevalue("web_server")
    from edgedistill.runtime import open_embedder, preprocess_batch

    images = sorted(deploy["queries"].iterdir())
    shot = tmp_path / "web_example.png"
    page = drive_page(url, images, tmp_path / "page.json", screenshot=shot)
    assert shot.stat().st_size > 10_000
    if os.environ.get("EDGEDISTILL_SCREENSHOT_DIR"):
        target = Path(os.environ["EDGEDISTILL_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)
    assert not [line for line in page["console"] if line.startswith(("error", "pageerror"))], page["console"]

    # the labels a user reads on the page are the runtime's
    reference = runtime_predictions(deploy, "onnx_fp32", images)
    assert {c["file"]: c["label"] for c in page["labels"]} == {Path(p).name: v for p, v in reference.items()}

    # the page's input tensor is Python's bit for bit (PIL's bicubic in JS), the embedding
    # onnxruntime-web's wasm kernels': cosine 1 to float rounding
    spec = deploy["manifest"]["preprocessing"]
    embedder = open_embedder(deploy["bundle"], "onnx_fp32", threads=1)
    by_name = {r["file"]: r for r in page["results"]}
    x = np.concatenate([preprocess_batch([p], spec) for p in images])
    ref = embedder.embed(x)
    mine = np.array([by_name[p.name]["embedding"] for p in images], np.float32)
    inputs = np.array([by_name[p.name]["input"] for p in images], np.float32).reshape(x.shape)
    np.testing.assert_array_equal(inputs, x)
    assert cosines(mine, ref).min() > 0.99999

    # the browser's own scaler (canvas drawImage) instead: measured, reported, not the default
    canvas = drive_page(url, images, tmp_path / "canvas.json", mode="canvas")
    cmine = np.array([{r["file"]: r for r in canvas["results"]}[p.name]["embedding"] for p in images], np.float32)
    canvas_labels = {c["file"]: c["label"] for c in canvas["labels"]}
    agree = np.mean([canvas_labels[p.name] == reference[str(p)] for p in images])
    print(f"\ncanvas resize vs PIL bicubic: top-1 agreement {agree:.2f}, min cosine {cosines(cmine, ref).min():.5f}")
