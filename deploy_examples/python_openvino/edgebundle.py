"""Reading an edgedistill bundle and classifying by k-NN, with numpy and Pillow only.

The part of ``classify.py`` that does not depend on the inference runtime: manifest, the
manifest-driven preprocessing, the labeled gallery, DINO-weighted k-NN, the embedding cache,
the gallery JSON for the C++ and browser examples, and the command line. It imports neither
edgedistill nor torch: copy it into your app beside ``classify.py``. (``python_onnxruntime/``
and ``python_openvino/`` carry identical copies; a test keeps them identical.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

FORMAT_VERSION = 1  # the bundle manifest version this reader understands
GALLERY_FORMAT = "edgedistill-gallery"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


class BundleError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- the bundle


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{bundle} is not a bundle: it has no manifest.json")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')!r}, this app reads {FORMAT_VERSION}")
    for key in ("input", "outputs", "preprocessing", "variants"):
        if key not in manifest:
            raise BundleError(f"{path}: no {key!r}")
    return manifest


def pick_variant(manifest: dict[str, Any], fmt: str, wanted: str | None = None) -> str:
    """``wanted``, else the default variant when it is of format ``fmt``, else the first fp32
    variant of that format, else any of it."""
    variants = manifest["variants"]
    if wanted:
        if wanted not in variants:
            raise BundleError(f"the bundle has no variant {wanted!r} (it has {', '.join(variants)})")
        if variants[wanted]["format"] != fmt:
            raise BundleError(f"variant {wanted!r} is {variants[wanted]['format']}, this app runs {fmt}")
        return wanted
    ours = [v for v in variants if variants[v]["format"] == fmt]
    if not ours:
        raise BundleError(f"the bundle has no {fmt} variant (it has {', '.join(variants)})")
    default = manifest.get("default_variant")
    if default in ours:
        return default
    return next((v for v in ours if variants[v]["precision"] == "fp32"), ours[0])


def variant_files(manifest: dict[str, Any], bundle: Path, variant: str) -> list[Path]:
    """The model file (and an OpenVINO IR's weights) of a variant; all must exist."""
    var = manifest["variants"][variant]
    files = [bundle / var["file"]]
    if var["format"] == "openvino":
        files.append(bundle / var.get("weights_file", Path(var["file"]).with_suffix(".bin").as_posix()))
    for f in files:
        if not f.is_file():
            raise BundleError(f"variant {variant!r} needs {f}, which is missing")
    return files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- preprocessing


def load_rgb(path: str | Path) -> Image.Image:
    """Decode fully, apply EXIF orientation (as a viewer shows the photo), make 8-bit RGB."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise BundleError(f"image not found: {path}") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise BundleError(f"cannot read image {path}: {exc}") from None
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit: scale, do not clip
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(arr / 257.0 if arr.size and arr.max() > 255 else arr), 0, 255)
                              .astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def preprocess(path: str | Path, pp: dict[str, Any]) -> np.ndarray:
    """One image -> (3, H, W) float32, exactly torchvision's Resize(short side, bicubic) +
    CenterCrop + ToTensor + Normalize on a PIL image (as the bundle was validated)."""
    img = load_rgb(path)
    resize = pp.get("resize")
    if isinstance(resize, list) and len(resize) == 1:
        resize = resize[0]
    if resize:
        if isinstance(resize, list):  # [h, w]: exact size
            size = (int(resize[1]), int(resize[0]))
        else:  # short side -> resize, long side int(resize * long / short): truncated, torchvision's rule
            w, h = img.size
            size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        if size != img.size:
            img = img.resize(size, RESAMPLE[pp.get("interpolation", "bicubic")])
    ch, cw = _pair(pp["crop"])
    if cw > img.width or ch > img.height:  # smaller than the crop: zero padding, left/top get the floor half
        pad = Image.new("RGB", (max(cw, img.width), max(ch, img.height)))
        pad.paste(img, ((pad.width - img.width) // 2, (pad.height - img.height) // 2))
        img = pad
    left, top = int(round((img.width - cw) / 2.0)), int(round((img.height - ch) / 2.0))  # half-to-even
    img = img.crop((left, top, left + cw, top + ch))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32)
    scale = float(Fraction(str(pp.get("scale", 1 / 255)).replace(" ", "")))
    x = x / np.float32(1.0 / scale)  # divide (ToTensor's x / 255), bit for bit
    x = (x - np.asarray(pp["mean"], np.float32)) / np.asarray(pp["std"], np.float32)
    if str(pp.get("channel_order", "RGB")).upper() == "BGR":
        x = x[..., ::-1]
    if str(pp.get("layout", "NCHW")).upper() == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- k-NN


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def knn_predict(gallery: np.ndarray, labels: np.ndarray, queries: np.ndarray, num_classes: int, k: int = 20,
                temperature: float = 0.07) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DINO-weighted k-NN: cosine similarity of L2-normalized embeddings, the k nearest gallery
    items (ties: lower index first) vote with weight exp(sim / T); most votes wins (ties: lower
    class). Returns (predictions (Nq,), votes (Nq, C), neighbour indices (Nq, k), similarities)."""
    sims = l2_normalize(queries) @ l2_normalize(gallery).T  # (Nq, Ng)
    k = min(int(k), sims.shape[1])
    cols = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(sims, cols, axis=1)
    weights = np.exp(vals.astype(np.float64) / temperature).astype(np.float32).astype(np.float64)
    votes = np.zeros((sims.shape[0], num_classes), dtype=np.float64)
    rows = np.arange(sims.shape[0])
    for j in range(k):
        votes[rows, labels[cols[:, j]]] += weights[:, j]
    return votes.argmax(axis=1), votes, cols, vals


# ----------------------------------------------------------------------------- images, gallery


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: Path) -> list[Path]:
    """Every image under ``root`` (hidden files and folders skipped), sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if _is_image(f)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def scan_gallery(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """An ImageFolder (one subfolder per class, sorted by name) -> (paths, labels, classes)."""
    if not root.is_dir():
        raise BundleError(f"gallery folder not found: {root}")
    if any(_is_image(p.name) for p in root.iterdir() if p.is_file()):
        raise BundleError(f"{root} has images at its top level: a gallery needs one subfolder per class")
    per_class = {d.name: list_images(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    classes = sorted(c for c, paths in per_class.items() if paths)
    if not classes:
        raise BundleError(f"no labeled images in {root}: expected {root}/<class>/<image>")
    paths = [p for c in classes for p in per_class[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in per_class[c]], dtype=np.int64)
    return paths, labels, classes


def expand_images(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise BundleError(f"no images in {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise BundleError(f"image not found: {path}")
    return paths


def embed_paths(model: Callable[[np.ndarray], np.ndarray], paths: list[Path], pp: dict[str, Any],
                batch_size: int) -> np.ndarray:
    """(N, D) float32 embeddings, ``batch_size`` images per model call."""
    chunks = [np.asarray(model(np.stack([preprocess(p, pp) for p in paths[i:i + batch_size]])), dtype=np.float32)
              for i in range(0, len(paths), batch_size)]
    return np.concatenate(chunks)


def gallery_embeddings(model: Callable[[np.ndarray], np.ndarray], root: Path, paths: list[Path],
                       pp: dict[str, Any], batch_size: int, model_key: str, use_cache: bool) -> np.ndarray:
    """Embed the gallery, or load ``<root>/.embeddings-<key>.npz`` when the model files, the
    preprocessing and every image (path, size, mtime) are unchanged."""
    listing = [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key = hashlib.sha256(json.dumps([model_key, pp, listing], sort_keys=True).encode()).hexdigest()[:20]
    cache = root / f".embeddings-{key}.npz"
    if use_cache and cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return data["embeddings"]
    feats = embed_paths(model, paths, pp, batch_size)
    if use_cache:
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, embeddings=feats)
            os.replace(tmp, cache)
        except OSError as exc:  # a read-only gallery still classifies
            print(f"warning: cannot write the cache {cache}: {exc}", file=sys.stderr)
            tmp.unlink(missing_ok=True)
    return feats


def write_gallery_json(path: Path, manifest: dict[str, Any], variant: str, root: Path, paths: list[Path],
                       labels: np.ndarray, classes: list[str], feats: np.ndarray, model_sha256: str) -> None:
    """The gallery for the C++ and browser examples: L2-normalized embeddings (9 significant
    digits: float32 round-trips), labels, classes and what model made them."""
    head = {"format": GALLERY_FORMAT, "version": 1, "bundle": manifest.get("name"), "variant": variant,
            "model_file": manifest["variants"][variant]["file"], "model_sha256": model_sha256,
            "output": manifest["outputs"][0]["name"], "dim": int(feats.shape[1]), "classes": classes,
            "labels": [int(v) for v in labels], "paths": [p.relative_to(root).as_posix() for p in paths]}
    rows = ",\n".join("[" + ",".join(f"{v:.9g}" for v in row) + "]" for row in l2_normalize(feats))
    text = json.dumps(head)[:-1] + ',\n"embeddings": [\n' + rows + "\n]}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- command line

ModelFactory = Callable[[Path, dict[str, Any], str, "int | None"], Callable[[np.ndarray], np.ndarray]]


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory (with manifest.json)")
    parser.add_argument("--gallery", required=True, type=Path, help="labeled folder: <class>/<image>")
    parser.add_argument("--images", nargs="*", default=[], help="image files or folders to classify")
    parser.add_argument("--variant", default=None, help="bundle variant (default: the manifest's, if this runtime's)")
    parser.add_argument("--k", type=int, default=20, help="neighbours that vote (default 20)")
    parser.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T) (default 0.07)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of path<TAB>label lines")
    parser.add_argument("--cache", action="store_true",
                        help="keep the gallery embeddings in <gallery>/.embeddings-<key>.npz (key: model sha256, "
                             "preprocessing, image list)")
    parser.add_argument("--gallery-json", type=Path, default=None,
                        help="also write the gallery embeddings as JSON (for the C++ and web examples)")
    args = parser.parse_args(argv)
    if args.k < 1 or args.temperature <= 0 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--k, --batch-size and --threads must be >= 1 and --temperature > 0")
    if not args.images and args.gallery_json is None:
        parser.error("nothing to do: pass --images and/or --gallery-json")
    return args


def main(argv: list[str] | None, fmt: str, open_model: ModelFactory, description: str) -> int:
    """The whole of ``classify.py``; ``open_model(bundle, manifest, variant, threads)`` returns
    a function (B, 3, H, W) float32 -> (B, D) embeddings."""
    args = parse_args(argv, description)
    try:
        manifest = read_manifest(args.bundle)
        variant = pick_variant(manifest, fmt, args.variant)
        files = variant_files(manifest, args.bundle, variant)
        pp = manifest["preprocessing"]
        shape = manifest["input"].get("shape", [-1])
        batch_size = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else args.batch_size  # static batch
        model = open_model(args.bundle, manifest, variant, args.threads)
        queries = expand_images(args.images)
        paths, labels, classes = scan_gallery(args.gallery)
        hashes = [sha256_file(f) for f in files]
        started = time.perf_counter()
        bank = gallery_embeddings(model, args.gallery, paths, pp, batch_size, ":".join(hashes), args.cache)
        gallery_seconds = time.perf_counter() - started
        if args.gallery_json is not None:
            write_gallery_json(args.gallery_json, manifest, variant, args.gallery, paths, labels, classes, bank,
                               hashes[0])
        if not queries:
            print(f"wrote {args.gallery_json} ({len(paths)} images, {len(classes)} classes)", file=sys.stderr)
            return 0
        started = time.perf_counter()
        feats = embed_paths(model, queries, pp, batch_size)
        query_seconds = time.perf_counter() - started
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preds, votes, cols, sims = knn_predict(bank, labels, feats, len(classes), args.k, args.temperature)
    if not args.json:
        for path, pred in zip(queries, preds):
            print(f"{path}\t{classes[pred]}")
        return 0
    shares = votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-300)
    result = {
        "bundle": str(args.bundle), "variant": variant, "k": min(args.k, len(paths)), "temperature": args.temperature,
        "gallery": {"path": str(args.gallery), "images": len(paths), "classes": classes, "seconds": gallery_seconds},
        "seconds": query_seconds,
        "predictions": [
            {"path": str(q), "label": classes[p], "class_index": int(p), "score": float(shares[i, p]),
             "votes": {c: float(votes[i, j]) for j, c in enumerate(classes)},
             "neighbours": [{"path": str(paths[c]), "label": classes[labels[c]], "similarity": float(s)}
                            for c, s in zip(cols[i, :5], sims[i, :5])]}
            for i, (q, p) in enumerate(zip(queries, preds))],
    }
    print(json.dumps(result, indent=1))
    return 0
