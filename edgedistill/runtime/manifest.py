"""The bundle manifest's schema: reading and checking ``manifest.json`` (the contract with apps
and ``bench``), and the constants the writer (``export.manifest``) uses. The fields::

    {
      "format_version": 1,
      "name": "vit_tiny_digits",
      "input": {"name": "pixel_values", "layout": "NCHW", "shape": [-1, 3, H, W], "dtype": "float32"},
      "outputs": [{"name": "embedding", "dims": [-1, D]}],
      "preprocessing": {"resize": int, "crop": int, "interpolation": "bicubic",
                        "mean": [3 floats], "std": [3 floats], "channel_order": "RGB",
                        "layout": "NCHW", "dtype": "float32", "scale": 1/255},
      "variants": {
        "<name>": {"file": "model.onnx", "format": "onnx" | "openvino" | "executorch",
                   "precision": "fp32" | "fp16" | "bf16" | "int8",
                   "sha256": hex, "size_bytes": int,
                   # openvino only, optional: the weights beside the .xml
                   "weights_file": "model.bin" (default: the .xml's stem + .bin),
                   "weights_sha256": hex,
                   # executorch only: what loads it
                   "runtime": {"library": "executorch", "version": str, "delegate": "XNNPACK", ...}}
      },
      "default_variant": "<name>",        # optional; else the first fp32 ONNX variant
      "provenance": {...},                 # free-form, not checked here
      "validation": {...}                  # free-form, not checked here
    }

Files are relative to the bundle directory and may not leave it, not even through a
symlink. A ``-1`` (or a string) in a shape is a dynamic axis.

Integrity: :func:`verify_variant` compares a variant's files with their recorded sha256;
``open_embedder`` and ``bench`` call it by default before loading (``verify=False`` /
``--no-verify`` for apps that verified the bundle when they installed it).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime import registry
from edgedistill.runtime.preprocessing import validate_spec
from edgedistill.limits import MAX_IMAGE_SIDE
from edgedistill.utils import read_json, sha256_file

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "FORMATS",
    "VARIANTS",
    "PRECISIONS",
    "read_manifest",
    "validate_manifest",
    "verify_variant",
    "variant_path",
    "variant_files",
    "default_variant",
    "pick_variant",
]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1  # what `edgedistill export` writes
SUPPORTED_FORMAT_VERSIONS = (1,)  # what this reader accepts
FORMATS = registry.formats()
# the variants `edgedistill export` writes, in manifest order (a reader accepts any name)
VARIANTS = tuple(v.name for _, v in registry.variants())
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def _fail(where: Path, message: str) -> EdgeDistillError:
    return EdgeDistillError(f"bad bundle manifest {where}: {message}")


def _relative_file(value: Any, where: Path, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"{key} must be a file name")
    pure = PurePosixPath(value.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise _fail(where, f"{key} {value!r} must be a path inside the bundle")
    return value


def _dims(value: Any) -> bool:
    return isinstance(value, list) and all(
        (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str) for v in value)


def validate_manifest(manifest: Any, where: Path = Path(MANIFEST_NAME)) -> dict[str, Any]:
    """Check the structure (not the files) of a manifest; return it unchanged."""
    if not isinstance(manifest, dict):
        raise _fail(where, "the top level must be a JSON object")
    version = manifest.get("format_version")
    if version is None:
        raise _fail(where, "no format_version")
    if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise _fail(where, f"format_version {version!r} is not supported by this edgedistill "
                           f"(supported: {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade edgedistill")
    if not isinstance(manifest.get("name"), str) or not manifest["name"]:
        raise _fail(where, "name must be a non-empty string")

    inp = manifest.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
        raise _fail(where, "input must be an object with a name")
    if not _dims(inp.get("shape")) or len(inp["shape"]) != 4:
        raise _fail(where, f"input.shape must be 4 dims like [-1, 3, H, W], got {inp.get('shape')!r}")
    if any(isinstance(v, int) and (v == 0 or v < -1 or v > MAX_IMAGE_SIDE) for v in inp["shape"]):
        raise _fail(where, f"input.shape {inp['shape']} has a dimension outside 1..{MAX_IMAGE_SIDE} (-1: dynamic)")
    if inp.get("dtype", "float32") not in ("float32", "float16"):
        raise _fail(where, f"input.dtype {inp.get('dtype')!r} is not float32 or float16")
    layout = inp.get("layout", "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise _fail(where, f"input.layout {layout!r} is not NCHW or NHWC")

    outputs = manifest.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        raise _fail(where, "outputs must be a non-empty list")
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise _fail(where, f"outputs[{i}] must be an object with a name")
        if "dims" in out and not _dims(out["dims"]):
            raise _fail(where, f"outputs[{i}].dims must be a list of ints, got {out['dims']!r}")

    if "preprocessing" not in manifest:
        raise _fail(where, "no preprocessing")
    try:
        spec = validate_spec(manifest["preprocessing"])
    except EdgeDistillError as exc:
        raise _fail(where, str(exc)) from None
    # the crop must produce what the model takes (static H, W only)
    hw = inp["shape"][2:] if layout == "NCHW" else inp["shape"][1:3]
    if all(isinstance(v, int) and v > 0 for v in hw) and list(hw) != spec["crop"]:
        raise _fail(where, f"preprocessing.crop {spec['crop']} does not match input.shape {inp['shape']}")

    variants = manifest.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise _fail(where, "variants must be a non-empty object")
    for name, var in variants.items():
        if not isinstance(var, dict):
            raise _fail(where, f"variant {name!r} must be an object")
        _relative_file(var.get("file"), where, f"variants.{name}.file")
        if var.get("format") not in FORMATS:
            raise _fail(where, f"variants.{name}.format {var.get('format')!r} is not one of {', '.join(FORMATS)}")
        if var.get("precision") not in PRECISIONS:
            raise _fail(where, f"variants.{name}.precision {var.get('precision')!r} is not one of "
                               f"{', '.join(PRECISIONS)}")
        if "weights_file" in var:
            _relative_file(var["weights_file"], where, f"variants.{name}.weights_file")
    sample = manifest.get("sample")
    if isinstance(sample, dict) and sample.get("file") is not None:
        _relative_file(sample["file"], where, "sample.file")
    default = manifest.get("default_variant")
    if default is not None and default not in variants:
        raise _fail(where, f"default_variant {default!r} is not among the variants ({', '.join(variants)})")
    return manifest


def variant_files(manifest: dict[str, Any], bundle_dir: Path | str, name: str) -> list[tuple[Path, str | None]]:
    """Every file a variant needs, with its expected sha256 (None when not recorded)."""
    entry = manifest["variants"][name]
    return registry.for_format(entry["format"]).variant_files(entry, Path(bundle_dir))


def _check_file(path: Path, bundle_dir: Path, where: Path, name: str) -> None:
    """The file exists and is inside the bundle once symlinks are followed."""
    if not path.is_file():
        raise _fail(where, f"variant {name!r} needs {path.name}, which is missing")
    real, root = os.path.realpath(path), os.path.realpath(bundle_dir)
    if os.path.commonpath([real, root]) != root:
        raise _fail(where, f"{path.name} of variant {name!r} is a link to {real}, outside the bundle")


def verify_variant(manifest: dict[str, Any], bundle_dir: Path | str, name: str) -> list[str]:
    """Compare the files of variant ``name`` with their recorded sha256 (a flipped byte in a
    model otherwise yields finite but wrong embeddings). Returns the digests computed."""
    bundle_dir = Path(bundle_dir)
    where = bundle_dir / MANIFEST_NAME
    digests = []
    for path, digest in variant_files(manifest, bundle_dir, name):
        _check_file(path, bundle_dir, where, name)
        actual = sha256_file(path)
        if digest is not None and actual != str(digest).lower():
            raise _fail(where, f"{path.name} of variant {name!r} does not match its sha256 "
                               "(corrupted or modified; export the bundle again)")
        digests.append(actual)
    return digests


def read_manifest(bundle_dir: Path | str, verify: bool = False) -> dict[str, Any]:
    """Read ``<bundle_dir>/manifest.json``, validate it and check that its files exist inside
    the bundle.

    With ``verify=True`` also compare every file's sha256 with the recorded one; readers that
    load one variant verify just that one (:func:`verify_variant`, which ``open_embedder``
    calls). Raises EdgeDistillError naming the problem.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise EdgeDistillError(f"bundle directory not found: {bundle_dir}")
    where = bundle_dir / MANIFEST_NAME
    if not where.is_file():
        raise EdgeDistillError(f"{bundle_dir} is not a bundle: it has no {MANIFEST_NAME}")
    manifest = validate_manifest(read_json(where), where)
    for name in manifest["variants"]:
        if verify:
            verify_variant(manifest, bundle_dir, name)
            continue
        for path, _ in variant_files(manifest, bundle_dir, name):
            _check_file(path, bundle_dir, where, name)
    sample = (manifest.get("sample") or {}).get("file")
    if sample and (bundle_dir / sample).exists():
        _check_file(bundle_dir / sample, bundle_dir, where, "sample")
    return manifest


def default_variant(manifest: dict[str, Any]) -> str:
    """``default_variant`` if set, else the first fp32 variant, else the first one."""
    variants = manifest["variants"]
    if manifest.get("default_variant"):
        return manifest["default_variant"]
    return next((name for name, var in variants.items() if var.get("precision") == "fp32"), next(iter(variants)))


def variant_path(manifest: dict[str, Any], bundle_dir: Path | str, name: str | None = None) -> Path:
    """The model file of variant ``name`` (default: :func:`default_variant`)."""
    name = name or default_variant(manifest)
    if name not in manifest["variants"]:
        raise EdgeDistillError(f"bundle {manifest.get('name', bundle_dir)!r} has no variant {name!r} "
                               f"(available: {', '.join(manifest['variants'])})")
    return Path(bundle_dir) / manifest["variants"][name]["file"]


def pick_variant(manifest: dict[str, Any], fmt: str, wanted: str | None = None) -> str:
    """The variant an app running ``fmt`` (a manifest format) uses: ``wanted`` (which must be
    of that format), else the default variant when it is, else the first fp32 variant of that
    format, else any of it."""
    variants = manifest["variants"]
    if wanted:
        if wanted not in variants:
            raise EdgeDistillError(f"the bundle has no variant {wanted!r} (it has {', '.join(variants)})")
        if variants[wanted]["format"] != fmt:
            raise EdgeDistillError(f"variant {wanted!r} is {variants[wanted]['format']}, this app runs {fmt}")
        return wanted
    ours = [v for v in variants if variants[v]["format"] == fmt]
    if not ours:
        raise EdgeDistillError(f"the bundle has no {fmt} variant (it has {', '.join(variants)})")
    if manifest.get("default_variant") in ours:
        return manifest["default_variant"]
    return next((v for v in ours if variants[v]["precision"] == "fp32"), ours[0])
