"""Writing ``manifest.json``: files with sha256 and precision, the input/output contract,
preprocessing, provenance and the gate figures. The schema (version, formats, variant names,
validation) is ``runtime.manifest``'s, the reader apps and ``bench`` use: what is written here
is read back through it before the bundle is moved into place."""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any, TypedDict

import edgedistill
from edgedistill.export.gates import KnnFigures, Validation
from edgedistill.export.plan import ExportPlan
from edgedistill.runtime import registry
from edgedistill.runtime.base import Build
from edgedistill.runtime.manifest import FORMAT_VERSION, VARIANTS, Manifest, VariantEntry, validate_manifest
from edgedistill.runtime.recommend import Candidate, Choice, recommend

__all__ = ["build_manifest", "recommendations", "summary_rows", "SummaryRow"]


def _versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), "edgedistill": edgedistill.__version__,
            **registry.versions(("torch", "torchvision", "timm", "numpy", "pillow"))}


def _file_entry(bundle: Path, path: Path) -> dict[str, Any]:
    from edgedistill.utils import sha256_file

    return {"file": path.relative_to(bundle).as_posix(), "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def _variant_entries(build: Build) -> dict[str, VariantEntry]:
    """Each built variant's entry with its files' sha256 and sizes filled in, in manifest
    order; a second file (weights beside a graph) as ``weights_*``."""
    entries = {}
    for name, path in build.files.items():
        entry = build.entries[name]
        files = _file_entry(build.work, path)
        for key, extra in registry.for_format(entry.format).manifest_files(path).items():
            other = _file_entry(build.work, extra)
            files.update({f"{key}_file": other["file"], f"{key}_sha256": other["sha256"],
                          f"{key}_size_bytes": other["size_bytes"]})
        files["total_size_bytes"] = sum(v for k, v in files.items() if k.endswith("size_bytes"))
        entries[name] = VariantEntry.model_validate({**files, **entry.as_json(), **files})
    return {v: entries[v] for v in VARIANTS if v in entries}


def recommendations(variants: dict[str, VariantEntry], report: Validation | dict[str, Any],
                    per: str = "format") -> dict[str, Choice]:
    """The variant to ship by ``runtime.recommend``'s rule, on the gate figures and the export's
    quick timing: per manifest format (``per="format"``), or one over every variant
    (``per="bundle"``: the bundle's ``default_variant``)."""
    from edgedistill.runtime.recommend import delta_of, resolution
    from edgedistill.runtime.rows import precision_label

    knn = report.get("knn") or {}
    figures: dict[str, KnnFigures] = knn.get("variants") or {}
    timing = (report.get("timing") or {}).get("p50_ms") or {}
    candidates = [Candidate(target=entry.format if per == "format" else "bundle", variant=name,
                            precision=precision_label(entry.precision, entry.inference_precision_hint),
                            ms=timing.get(name), top1=figures.get(name, {}).get("top1"),
                            knn_delta=delta_of(figures.get(name, {})), fp32=entry.precision == "fp32")
                  for name, entry in variants.items()]
    noise = resolution((knn.get("torch_fp32") or {}).get("top1"), knn.get("val_images"))
    return recommend(candidates, float(knn.get("max_drop", 1.0)), noise, timing="export's quick timing: p50")


def _default_variant(variants: dict[str, VariantEntry], report: Validation) -> str:
    """The rule's choice over every variant, else the first FP32 variant, else the first."""
    choice = recommendations(variants, report, per="bundle").get("bundle")
    if choice is not None:
        return choice.candidate.variant
    return next((v for v, e in variants.items() if e.precision == "fp32"), next(iter(variants)))


def _sample(plan: ExportPlan, built: Build, image: Any, outputs: dict[str, Any]) -> dict[str, Any]:
    """One real image and its torch FP32 outputs: an app's self-test."""
    path = built.work / "sample.png"
    image.save(path, format="PNG")
    return {**_file_entry(built.work, path), "source": plan.parity_source,
            "outputs": {o: [float(v) for v in outputs[o][0]] for o in plan.output_names},
            "note": "torch FP32 outputs for this image through the manifest's preprocessing: an app's "
                    "self-test (expect cosine >= the parity threshold for fp32 variants)"}


def _provenance(plan: ExportPlan, built: Build) -> dict[str, Any]:
    from edgedistill.config import to_dict

    o, meta, model = plan.options, plan.meta, plan.model
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "student": {"run_dir": str(plan.run.path.resolve()), "run_name": meta.get("run"), "arch": meta.get("arch"),
                    "kwargs": meta.get("kwargs"), "embed_dim": int(model.embed_dim), "depth": len(model.blocks),
                    "num_heads": meta.get("num_heads"), "patch_size": int(model.patch_embed.patch_size[0]),
                    "trained_img_size": plan.trained_size, "img_size": plan.img_size,
                    "feature": meta.get("feature"), "weights_sha256": meta.get("sha256")},
        "teacher": meta.get("teacher"),
        "projector": plan.projector_info,
        "config": to_dict(plan.config) if plan.config is not None else None,
        "export": {"formats": list(plan.formats), "int8": bool(o.int8), "fp16": bool(o.fp16),
                   "opset": int(o.opset), "calib": plan.calib_source, "calib_size": int(o.calib_size),
                   "data": plan.knn_source, "min_cosine": o.min_cosine,
                   "max_drop": o.max_drop, "onnx_exporter": dict(built.onnx_export, api="torch.onnx.export")},
        "versions": _versions(),
    }


def build_manifest(plan: ExportPlan, built: Build, report: Validation, sample_image: Any,
                   sample_outputs: dict[str, Any]) -> Manifest:
    """The manifest of a bundle whose variants all passed their gates, validated as every reader
    validates it."""
    from edgedistill.export.onnx import INPUT_NAME

    variants = _variant_entries(built)
    return validate_manifest({
        "format_version": FORMAT_VERSION,
        "name": plan.name,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "shape": [-1, 3, plan.img_size, plan.img_size],
                  "dtype": "float32"},
        "outputs": [o.as_json() for o in plan.outputs],
        "preprocessing": plan.spec,
        "variants": {name: entry.as_json() for name, entry in variants.items()},
        "default_variant": _default_variant(variants, report),
        "recommended": {fmt: c.candidate.variant for fmt, c in recommendations(variants, report).items()},
        "sample": _sample(plan, built, sample_image, sample_outputs),
        "provenance": _provenance(plan, built),
        "validation": report,
    })


class SummaryRow(TypedDict):
    """One line of export's table."""

    variant: str
    precision: str
    size_bytes: int | None
    cosine: float | None
    max_abs: float | None
    parity_gated: bool
    top1: float | None
    knn_delta: float | None  # top1 minus torch FP32's, in points (positive: better)
    passed: bool | None


def summary_rows(validation: Validation | dict[str, Any],
                 variants: dict[str, VariantEntry] | None = None) -> list[SummaryRow]:
    """One row per variant: precision label, size (when ``variants`` are given), parity
    (cosine, max-abs), k-NN top-1 and ``knn_delta``, gate status, from a validation report
    (``Manifest.validation``); a variant the gate also judged under another setting (a runtime's
    f32 fallback of a bf16 hint) gets a row for it, as ``bench`` measures it."""
    from edgedistill.runtime.recommend import delta_of
    from edgedistill.runtime.rows import precision_label

    variants = variants or {}
    parity = validation.get("parity", {}).get("variants", {})
    knn = validation.get("knn", {}).get("variants", {})
    rows: list[SummaryRow] = []
    for v in [v for v in VARIANTS if v in variants or v in parity or v in knn]:
        p, k = parity.get(v, {}), knn.get(v, {})
        status = [s for s in (p.get("passed"), k.get("passed")) if s is not None]
        entry = variants.get(v)
        precision = entry.precision if entry else v.rsplit("_", 1)[-1]
        hint = (entry.inference_precision_hint if entry else None) or k.get("inference_precision_hint")
        rows.append({"variant": v, "precision": precision_label(precision, hint),
                     "size_bytes": entry.total_size_bytes if entry else None, "cosine": p.get("min_cosine"),
                     "max_abs": p.get("max_abs"), "parity_gated": bool(p.get("gated")), "top1": k.get("top1"),
                     "knn_delta": delta_of(k), "passed": all(status) if status else None})
        for key in [key for key, f in k.items() if key.endswith("_fallback") and isinstance(f, dict)]:
            f = k[key]
            rows.append({"variant": v, "precision": precision_label(precision, key.split("_", 1)[0]),
                         "size_bytes": None, "cosine": None, "max_abs": None, "parity_gated": False,
                         "top1": f.get("top1"), "knn_delta": delta_of(f), "passed": f.get("passed")})
    ref = validation.get("knn", {}).get("torch_fp32")
    if ref:
        rows.insert(0, {"variant": "torch_fp32", "precision": "fp32", "size_bytes": None, "cosine": None,
                        "max_abs": None, "parity_gated": False, "top1": ref["top1"], "knn_delta": 0.0, "passed": None})
    return rows
