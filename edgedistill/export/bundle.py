"""``export_bundle``: a distilled student -> ``export/<name>/`` with gated variants (SPEC §7, §8).

Stages, in order (the cheap gate first, so an impossible threshold fails fast):

1. check every input (one-line errors before any work);
2. ONNX FP32 export + ``onnx.checker``; OpenVINO FP32 IR (and FP16 with ``fp16``);
3. parity gate for the FP32 variants on real images, batch 1 and 8;
4. INT8: calibration images through the app's preprocessing, ONNX Runtime static QDQ and
   NNCF; their parity is reported;
5. accuracy gate: k-NN top-1 of torch FP32 and every variant on the labeled ``data``;
6. manifest.json, validation.json, sample.png.

All of it happens in a temporary sibling directory renamed into place at the end
(``utils.atomic_directory``): a failed gate, an error or Ctrl-C leaves no bundle behind, and
``force`` replaces an old bundle only once the new one is complete.
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import edgedistill
from edgedistill.errors import EdgeDistillError
from edgedistill.export import gates as _gates
from edgedistill.export import images as _images
from edgedistill.export import openvino as _openvino
from edgedistill.export import quantize as _quantize

__all__ = ["export_bundle", "GateFailed", "FORMATS", "VARIANTS", "FORMAT_VERSION", "summary_rows"]

FORMAT_VERSION = 1
FORMATS = ("onnx", "openvino")
VARIANTS = ("onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_fp16", "openvino_int8")
PARITY_IMAGES = 8
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSIONED = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "openvino", "nncf", "numpy", "pillow")


class GateFailed(EdgeDistillError):
    """A gate failed; ``report`` holds every figure measured (for --json and the table)."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------- inputs


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    items = [str(f).strip().lower() for f in items if str(f).strip()]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise EdgeDistillError(f"unknown export format {', '.join(unknown) or '(none)'}: choose from "
                               f"{', '.join(FORMATS)} (comma-separated)")
    return tuple(f for f in FORMATS if f in items)


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise EdgeDistillError(f"model run directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise EdgeDistillError(f"--model must be a run directory (with student.json), got the file {model_dir}")
    if not (model_dir / "student.json").is_file() or not (model_dir / "student.safetensors").is_file():
        hint = " (it holds a teacher: export a distilled student)" if (model_dir / "teacher.json").is_file() else ""
        raise EdgeDistillError(f"{model_dir} is not a distilled student run: it needs student.json and "
                               f"student.safetensors{hint}")


def _run_config(model_dir: Path) -> dict[str, Any] | None:
    import yaml

    path = model_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _config_data(config: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(labeled k-NN data, any images) that the run's own config points at, where they exist
    here: the defaults for ``data`` and ``calib``."""
    from edgedistill.data import has_split_layout

    data = (config or {}).get("data") or {}
    path, val_path = str(data.get("path") or ""), str(data.get("val_path") or "")

    def usable(p: str) -> bool:
        return p == "digits" or (bool(p) and Path(p).expanduser().is_dir())

    labeled = None
    for candidate in (val_path, path):
        if candidate == "digits" or (usable(candidate) and has_split_layout(Path(candidate).expanduser())):
            labeled = candidate
            break
    return labeled, (path if usable(path) else None)


def _mean_std(config: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    from edgedistill.data import IMAGENET_MEAN, IMAGENET_STD

    data = (config or {}).get("data") or {}
    mean, std = data.get("mean", IMAGENET_MEAN), data.get("std", IMAGENET_STD)
    try:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError):
        raise EdgeDistillError("the run's config.yaml has a malformed data.mean/data.std") from None
    if len(mean) != 3 or len(std) != 3:
        raise EdgeDistillError("the run's config.yaml must give 3 values for data.mean and data.std")
    return mean, std


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "edgedistill": edgedistill.__version__}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _file_entry(bundle: Path, path: Path) -> dict[str, Any]:
    from edgedistill.utils import sha256_file

    return {"file": path.relative_to(bundle).as_posix(), "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


# ----------------------------------------------------------------------------- progress


def _progress(console: Any, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not enabled, transient=False)


# ----------------------------------------------------------------------------- the stage


def export_bundle(
    model_dir: str | Path,
    *,
    out_root: str | Path = "export",
    name: str | None = None,
    formats: str | Sequence[str] = FORMATS,
    int8: bool = True,
    fp16: bool = False,
    calib: str | Path | None = None,
    calib_size: int = 64,
    calib_method: str = "minmax",
    data: str | Path | None = None,
    opset: int = 18,
    img_size: int | None = None,
    projection: bool = False,
    min_cosine: float = 0.9999,
    max_drop: float = 1.0,
    int8_hint: str = "auto",
    force: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    threads: int | None = None,
    progress: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Export the student of ``model_dir`` into ``out_root/name`` and gate every variant.

    Args:
        model_dir: a distill run directory (``student.json`` + ``student.safetensors``;
            ``projector.safetensors`` for ``projection``; ``config.yaml`` supplies mean/std
            and the default ``data``/``calib`` when its folders exist here).
        formats: "onnx", "openvino" (a comma-separated string or a sequence).
        int8: add ``onnx_int8`` / ``openvino_int8`` (static PTQ on ``calib`` images).
        fp16: add ``openvino_fp16`` (FP16 weights, f32 inference).
        calib: image folder for calibration (default: the train split of ``data``).
        data: labeled split folder or "digits" for the accuracy gate (default: the run's
            config data when it is labeled and present; without any, the gate is skipped and
            INT8 variants are exported unverified, never as the default variant).
        min_cosine: parity threshold for the FP32 variants (batch 1 and 8).
        max_drop: largest allowed k-NN top-1 drop, in points, against torch FP32.

    Returns:
        ``{"bundle", "name", "manifest", "validation", "rows", "default_variant"}``.
        Raises :class:`GateFailed` (an EdgeDistillError, carrying the report) when a gate fails.
    """
    import torch
    from rich.console import Console

    from edgedistill.data import eval_preprocessing
    from edgedistill.export import onnx as _onnx
    from edgedistill.models.backbone_io import load_backbone
    from edgedistill.runtime.manifest import read_manifest
    from edgedistill.utils import atomic_directory, atomic_write_json

    con = console if console is not None else Console(stderr=True, quiet=not progress)

    # ---- 1. inputs: everything a user can get wrong fails here, before any work
    model_dir = Path(model_dir).expanduser()
    _check_model_dir(model_dir)
    formats = parse_formats(formats)
    name = name or model_dir.resolve().name
    if not _NAME_RE.match(name):
        raise EdgeDistillError(f"bundle name {name!r} must be a plain folder name (letters, digits, . _ -)")
    out_root = Path(out_root).expanduser()
    bundle_dir = out_root / name
    if bundle_dir.exists() and not force:
        raise EdgeDistillError(f"{bundle_dir} already exists: pass --force to replace it, or choose another --name")
    if bundle_dir.exists() and not bundle_dir.is_dir():
        raise EdgeDistillError(f"{bundle_dir} exists and is not a directory")
    _onnx.check_opset(opset)
    if int8 and calib_method not in _quantize.ORT_CALIB_METHODS:
        raise EdgeDistillError(f"unknown calibration method {calib_method!r}: choose "
                               f"{', '.join(_quantize.ORT_CALIB_METHODS)}")
    if int(calib_size) < 1 or int(batch_size) < 1:
        raise EdgeDistillError("--calib-size and --batch-size must be >= 1")
    if threads is not None and threads < 1:
        raise EdgeDistillError(f"--threads must be >= 1, got {threads}")
    if fp16 and "openvino" not in formats:
        raise EdgeDistillError("--fp16 makes an OpenVINO FP16 variant: add openvino to --formats")
    if projection and not (model_dir / "projector.safetensors").is_file():
        raise EdgeDistillError(f"--projection needs projector.safetensors in {model_dir} (written by "
                               "`edgedistill distill`); this run has none")
    min_cosine, max_drop = float(min_cosine), float(max_drop)

    model, meta = load_backbone(model_dir, role="student")
    trained_size = int(meta.get("img_size") or model.patch_embed.img_size[0])
    patch = int(model.patch_embed.patch_size[0])
    img_size = int(img_size or trained_size)
    if img_size < patch or img_size % patch:
        raise EdgeDistillError(f"--img-size {img_size} must be a multiple of the student's patch size {patch}")
    if img_size != trained_size:
        # resamples the position embedding (bicubic), as timm does for a new input size
        model.set_input_size(img_size=(img_size, img_size))
    projector, projector_info = (None, None)
    if projection:
        projector, projector_info = _onnx.load_projector(model_dir, int(model.embed_dim))
    graph = _onnx.EmbeddingModel(model, projector).eval()

    config = _run_config(model_dir)
    mean, std = _mean_std(config)
    spec = eval_preprocessing(img_size, mean, std)
    config_labeled, config_images = _config_data(config)

    knn_source = str(data) if data is not None else config_labeled
    knn_pair = None
    if data is not None:
        knn_pair = _images.labeled_pair(knn_source, spec, "--data")
    elif knn_source is not None:
        try:  # the run's own data is only a default: unusable, it means "no accuracy gate"
            knn_pair = _images.labeled_pair(knn_source, spec, "the run's data.path")
            con.print(f"accuracy gate on the run's data: {knn_source}")
        except EdgeDistillError as exc:
            con.print(f"[yellow]warning:[/] the run's data cannot serve the accuracy gate ({exc})")
            knn_source = None
    if calib is not None:
        calib_source, calib_ds = str(calib), _images.open_split(str(calib), "train", spec, scan=False)
    elif knn_pair is not None:
        calib_source, calib_ds = f"{knn_source} (train split)", knn_pair[0]
    elif config_images is not None:
        calib_source = f"{config_images} (the run's data.path)"
        calib_ds = _images.open_split(config_images, "train", spec, scan=False)
    else:
        calib_source, calib_ds = None, None
    if int8 and calib_ds is None:
        raise EdgeDistillError("INT8 needs calibration images: pass --calib DIR or --data DIR (or --no-int8)")
    if knn_pair is not None:
        parity_source, parity_ds = f"{knn_source} (val split)", knn_pair[1]
    elif calib_ds is not None:
        parity_source, parity_ds = calib_source, calib_ds
    else:
        raise EdgeDistillError("the parity gate needs real images: pass --data DIR (labeled train/val) or --calib DIR")
    if knn_pair is None:
        con.print("[yellow]warning:[/] no labeled --data: the accuracy gate is skipped"
                  + (" and the INT8 variants are not verified" if int8 else ""))

    planned = [v for v in VARIANTS if v.split("_")[0] in formats and
               (v.endswith("fp32") or (v.endswith("int8") and int8) or (v.endswith("fp16") and fp16))]
    con.print(f"exporting [bold]{model_dir}[/] -> [bold]{bundle_dir}[/]: {', '.join(planned)} "
              f"({img_size}px, opset {opset}{', projection' if projection else ''})")

    outputs = [{"name": _onnx.EMBEDDING, "dims": [-1, int(model.embed_dim)],
                "description": "student CLS token after the final norm (not L2-normalized)"}]
    if projector_info is not None:
        outputs.append({"name": _onnx.PROJECTION, "dims": [-1, projector_info["teacher_dim"]],
                        "description": "the embedding mapped into the teacher's feature space by the distillation "
                                       "projector (not L2-normalized)"})
    output_names = [o["name"] for o in outputs]

    variants: dict[str, dict[str, Any]] = {}
    parity: dict[str, dict[str, Any]] = {}
    knn: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    report: dict[str, Any] = {}

    def recorded_hint(variant: str) -> str:
        return variants[variant].get("inference_precision_hint", _openvino.INFERENCE_PRECISION_HINT)

    def embedders(variant: str, path: Path, names: Sequence[str] = tuple(output_names),
                  hint: str | None = None) -> dict[str, Any]:
        """The app's path to a variant: one runtime embedder per output, OpenVINO with the
        variant's recorded precision hint unless ``hint`` overrides it."""
        from edgedistill.runtime.embedders import OnnxEmbedder, OpenVinoEmbedder

        if variant.startswith("onnx"):
            return {o: OnnxEmbedder(path, threads=threads, output=o, name=variant) for o in names}
        hint = hint or recorded_hint(variant)
        return {o: OpenVinoEmbedder(path, threads=threads, precision=hint, output=o, name=variant) for o in names}

    with atomic_directory(bundle_dir) as work, _progress(con, progress) as bar:
        # ---- 2. FP32 (and FP16) variants
        onnx_fp32 = work / ("onnx_fp32.onnx" if "onnx" in formats else ".intermediate_fp32.onnx")
        settings["onnx_export"] = _onnx.export_onnx(graph, onnx_fp32, img_size, opset)
        files: dict[str, Path] = {}
        if "onnx" in formats:
            files["onnx_fp32"] = onnx_fp32
            variants["onnx_fp32"] = {"format": "onnx", "precision": "fp32"}
        if "openvino" in formats:
            for variant, compress in (("openvino_fp32", False), ("openvino_fp16", True)):
                if variant not in planned:
                    continue
                files[variant] = work / f"{variant}.xml"
                settings[variant] = _openvino.convert_openvino(onnx_fp32, files[variant], fp16=compress)
                variants[variant] = {"format": "openvino", "precision": "fp16" if compress else "fp32",
                                     "inference_precision_hint": _openvino.INFERENCE_PRECISION_HINT}

        # ---- 3. parity gate (FP32), fail fast
        parity_idx = _images.pick_indices(len(parity_ds), PARITY_IMAGES, seed=1)
        parity_x, parity_pil = _images.load_arrays(parity_ds, parity_idx, spec)
        with torch.inference_mode():
            batch8 = graph.outputs(torch.from_numpy(parity_x))
            singles = [graph.outputs(torch.from_numpy(parity_x[i:i + 1])) for i in range(len(parity_x))]
        references = {
            8: {o: batch8[o].numpy() for o in output_names},
            1: {o: np.concatenate([s[o].numpy() for s in singles]) for o in output_names},
        }

        def check_parity(variant: str) -> None:
            figures = _gates.parity_of(embedders(variant, files[variant]), references, parity_x)
            figures["gated"] = variants[variant]["precision"] == "fp32"
            figures["passed"] = bool(figures["min_cosine"] >= min_cosine) if figures["gated"] else None
            parity[variant] = figures

        for variant in [v for v in files if variants[v]["precision"] == "fp32"]:
            check_parity(variant)
        failed = _gates.parity_failures(parity, min_cosine)
        if failed:
            report = _report(parity, knn, min_cosine, max_drop, parity_source, None, passed=False)
            raise GateFailed("parity gate failed: " + "; ".join(failed), report)
        for variant in [v for v in files if variants[v]["precision"] != "fp32"]:
            check_parity(variant)

        # ---- 4. INT8
        if int8:
            calib_idx = _images.pick_indices(len(calib_ds), int(calib_size), seed=0)
            calib_x, _ = _images.load_arrays(calib_ds, calib_idx, spec, progress=bar,
                                             description="calibration images")
            calib_info = {"source": calib_source, "images": int(len(calib_x)), "requested": int(calib_size),
                          "preprocessing": "edgedistill.runtime.preprocess (the manifest's preprocessing)"}
            if "onnx" in formats:
                task = bar.add_task("calibrating onnx_int8", total=len(calib_x))
                files["onnx_int8"] = work / "onnx_int8.onnx"
                settings["onnx_int8"] = _quantize.quantize_onnx(
                    onnx_fp32, files["onnx_int8"], calib_x, method=calib_method, input_name=_onnx.INPUT_NAME,
                    on_batch=lambda n: bar.advance(task, n), show_library_output=False)
                variants["onnx_int8"] = {"format": "onnx", "precision": "int8",
                                         "quantization": dict(settings["onnx_int8"], calibration=calib_info)}
            if "openvino" in formats:
                task = bar.add_task("calibrating openvino_int8 (NNCF passes)", total=None)
                files["openvino_int8"] = work / "openvino_int8.xml"
                hint = _openvino.int8_precision_hint(int8_hint)
                settings["openvino_int8"] = {**_openvino.quantize_openvino(
                    files["openvino_fp32"], files["openvino_int8"], calib_x, on_item=lambda: bar.advance(task)),
                    "inference_precision_hint": hint}
                bar.update(task, total=bar.tasks[task].completed)
                variants["openvino_int8"] = {"format": "openvino", "precision": "int8", "inference_precision_hint": hint,
                                             "quantization": dict(settings["openvino_int8"], calibration=calib_info)}
            for variant in ("onnx_int8", "openvino_int8"):
                if variant in files:
                    check_parity(variant)

        # ---- 5. accuracy gate
        knn_meta: dict[str, Any] | None = None
        if knn_pair is not None:
            train_ds, val_ds = knn_pair
            bank = _images.PreprocessedSplit(train_ds, batch_size, num_workers=num_workers)
            queries = _images.PreprocessedSplit(val_ds, batch_size, num_workers=num_workers)
            from edgedistill.eval.knn import TorchEmbedder

            classes = len(train_ds.classes)
            bar.stop()  # extract_features draws its own bars
            reference = _gates.knn_of(TorchEmbedder(model, name="torch_fp32"), bank, queries, num_classes=classes,
                                      description="torch_fp32", progress=progress)
            def gate(variant: str, hint: str | None = None) -> dict[str, Any]:
                embedder = embedders(variant, files[variant], [_onnx.EMBEDDING], hint=hint)[_onnx.EMBEDDING]
                figures = _gates.knn_of(embedder, bank, queries, num_classes=classes,
                                        description=variant + (f" ({hint})" if hint else ""), progress=progress)
                figures["reference_top1"] = reference["top1"]
                figures["drop"] = round(reference["top1"] - figures["top1"], 6)
                figures["passed"] = bool(figures["drop"] <= max_drop)
                return figures

            for variant in files:
                knn[variant] = gate(variant)
                hint = recorded_hint(variant)
                if hint != _openvino.INFERENCE_PRECISION_HINT:
                    # a device without native bf16 runs this variant in f32: gate that path too
                    knn[variant]["inference_precision_hint"] = hint
                    knn[variant]["f32_fallback"] = gate(variant, _openvino.INFERENCE_PRECISION_HINT)
                    knn[variant]["passed"] = knn[variant]["passed"] and knn[variant]["f32_fallback"]["passed"]
            knn_meta = {"source": knn_source, "train_images": len(train_ds), "val_images": len(val_ds),
                        "classes": classes, "k": reference["k"], "k_used": reference["k_used"],
                        "temperature": 0.07, "protocol": "DINO weighted k-NN on L2-normalized embeddings",
                        "torch_fp32": reference}
        report = _report(parity, knn, min_cosine, max_drop, parity_source, knn_meta, passed=True)
        failed = _gates.knn_failures(knn, max_drop)
        if failed:
            report["passed"] = False
            raise GateFailed("accuracy gate failed: " + "; ".join(failed), report)

        # ---- 6. files, manifest
        if "onnx" not in formats:
            onnx_fp32.unlink()
        for variant, path in files.items():
            entry = _file_entry(work, path)
            if variants[variant]["format"] == "openvino":
                weights = _file_entry(work, path.with_suffix(".bin"))
                entry.update(weights_file=weights["file"], weights_sha256=weights["sha256"],
                             weights_size_bytes=weights["size_bytes"])
            entry["total_size_bytes"] = entry["size_bytes"] + entry.get("weights_size_bytes", 0)
            variants[variant] = {**entry, **variants[variant]}
        variants = {v: variants[v] for v in VARIANTS if v in variants}
        default = _default_variant(variants, knn)

        sample_path = work / "sample.png"
        parity_pil[0].save(sample_path, format="PNG")
        sample = {**_file_entry(work, sample_path), "source": parity_source,
                  "outputs": {o: [float(v) for v in references[1][o][0]] for o in output_names},
                  "note": "torch FP32 outputs for this image through the manifest's preprocessing: an app's "
                          "self-test (expect cosine >= the parity threshold for fp32 variants)"}
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "input": {"name": _onnx.INPUT_NAME, "layout": "NCHW", "shape": [-1, 3, img_size, img_size],
                      "dtype": "float32"},
            "outputs": outputs,
            "preprocessing": spec,
            "variants": variants,
            "default_variant": default,
            "sample": sample,
            "provenance": {
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "student": {"run_dir": str(model_dir.resolve()), "run_name": meta.get("run"), "arch": meta.get("arch"),
                            "kwargs": meta.get("kwargs"), "embed_dim": int(model.embed_dim),
                            "depth": len(model.blocks), "num_heads": meta.get("num_heads"),
                            "patch_size": patch, "trained_img_size": trained_size, "img_size": img_size,
                            "feature": meta.get("feature"), "weights_sha256": meta.get("sha256")},
                "teacher": meta.get("teacher"),
                "projector": projector_info,
                "config": config,
                "export": {"formats": list(formats), "int8": bool(int8), "fp16": bool(fp16), "opset": int(opset),
                           "calib": calib_source, "calib_size": int(calib_size), "calib_method": calib_method,
                           "data": knn_source, "min_cosine": min_cosine, "max_drop": max_drop,
                           "onnx_exporter": dict(settings["onnx_export"], api="torch.onnx.export")},
                "versions": _versions(),
            },
            "validation": report,
        }
        atomic_write_json(work / "manifest.json", manifest)
        atomic_write_json(work / "validation.json", report)
        read_manifest(work, verify=True)  # the reader apps use must accept what we wrote

    rows = summary_rows(manifest)
    con.print(f"bundle written: [bold]{bundle_dir}[/] (default variant {default})")
    return {"bundle": str(bundle_dir), "name": name, "manifest": manifest, "validation": report, "rows": rows,
            "default_variant": default}


def _report(parity: dict[str, Any], knn: dict[str, Any], min_cosine: float, max_drop: float, parity_source: str,
            knn_meta: dict[str, Any] | None, *, passed: bool) -> dict[str, Any]:
    return {
        "passed": passed,
        "parity": {"min_cosine": min_cosine, "source": parity_source, "variants": parity},
        "knn": ({**knn_meta, "max_drop": max_drop, "variants": knn} if knn_meta is not None
                else {"skipped": "no labeled data (pass --data DIR with train/ and val/ class folders)",
                      "max_drop": max_drop, "variants": knn}),
    }


def _default_variant(variants: dict[str, Any], knn: dict[str, Any]) -> str:
    """The most accurate INT8 variant that passed its accuracy gate (ONNX on a tie: it runs
    wherever ONNX Runtime does), else the FP32 ONNX model, else the first variant."""
    passed = [v for v in ("onnx_int8", "openvino_int8") if v in variants and knn.get(v, {}).get("passed")]
    if passed:
        return max(passed, key=lambda v: (knn[v]["top1"], v == "onnx_int8"))
    return "onnx_fp32" if "onnx_fp32" in variants else next(iter(variants))


def summary_rows(manifest_or_report: dict[str, Any], variants: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per variant: size, parity (cosine, max-abs), k-NN top-1 and drop, gate status.
    Takes a manifest, or a validation report (then without sizes)."""
    validation = manifest_or_report.get("validation", manifest_or_report)
    variants = variants if variants is not None else manifest_or_report.get("variants", {})
    parity = validation.get("parity", {}).get("variants", {})
    knn = validation.get("knn", {}).get("variants", {})
    names = [v for v in VARIANTS if v in variants or v in parity or v in knn]
    rows = []
    for v in names:
        p, k = parity.get(v, {}), knn.get(v, {})
        status = [s for s in (p.get("passed"), k.get("passed")) if s is not None]
        rows.append({
            "variant": v,
            "precision": variants.get(v, {}).get("precision", v.rsplit("_", 1)[-1]),
            "size_bytes": variants.get(v, {}).get("total_size_bytes"),
            "cosine": p.get("min_cosine"),
            "max_abs": p.get("max_abs"),
            "parity_gated": bool(p.get("gated")),
            "top1": k.get("top1"),
            "drop": k.get("drop"),
            "passed": all(status) if status else None,
        })
    ref = validation.get("knn", {}).get("torch_fp32")
    if ref:
        rows.insert(0, {"variant": "torch_fp32", "precision": "fp32", "size_bytes": None, "cosine": None,
                        "max_abs": None, "parity_gated": False, "top1": ref["top1"], "drop": 0.0, "passed": None})
    return rows
