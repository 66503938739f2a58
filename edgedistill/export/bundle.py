"""``export_bundle``: a distilled student -> ``export/<name>/`` with gated variants.

The steps, in order (the cheap gate first, so an impossible threshold fails fast):

1. plan: check every input, load the student, pick the images (``export.plan``);
2. FP32 (and FP16) variants: ONNX + ``onnx.checker``, OpenVINO IR (``export.variants``);
3. parity gate for the FP32 variants on real images, batch 1 and 8 (``export.gates``);
4. INT8 variants calibrated on real images through the app's preprocessing;
5. accuracy gate: k-NN top-1 of torch FP32 and every variant on the labeled data;
6. manifest.json, validation.json, sample.png (``export.manifest``), read back verified.

All of it happens in a temporary sibling directory renamed into place at the end
(``utils.atomic_directory``): a failed gate, an error, Ctrl-C or SIGTERM leaves no bundle
behind, and ``force`` replaces an old bundle only once the new one is complete. An export
holds ``<out>/.<name>.lock`` throughout (``utils.directory_lock``): a second export of the same
name fails at once, and the work folders of a killed export are removed by the next one. A
folder that appears at the destination while an export runs is never replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgedistill.export.gates import PARITY_IMAGES, AccuracyGate, GateFailed, ParityGate, gate_report
from edgedistill.export.manifest import build_manifest, summary_rows
from edgedistill.export.plan import ExportPlan, bundle_target, check_out_root, parse_formats, plan_export
from edgedistill.export.variants import FP_VARIANTS, INT8_VARIANTS, Built, build_variants
from edgedistill.runtime.manifest import FORMATS, VARIANTS

__all__ = ["export_bundle", "GateFailed", "FORMATS", "DEFAULT_FORMATS", "VARIANTS", "summary_rows"]

DEFAULT_FORMATS = ("onnx", "openvino")  # executorch is opt-in (its own extra)


def export_bundle(model_dir: str | Path, *, out_root: str | Path = "export", name: str | None = None,
                  formats: str | Sequence[str] = DEFAULT_FORMATS, int8: bool = True, fp16: bool = False,
                  calib: str | Path | None = None, calib_size: int = 64, calib_method: str = "minmax",
                  data: str | Path | None = None, opset: int = 18, img_size: int | None = None,
                  projection: bool = False, min_cosine: float = 0.9999, max_drop: float = 1.0,
                  int8_hint: str = "auto", recovery_attempts: int = 4, force: bool = False, batch_size: int = 64,
                  num_workers: int = 0, threads: int | None = None, progress: bool = True,
                  console: Any = None) -> dict[str, Any]:
    """Export the student of ``model_dir`` into ``out_root/name`` and gate every variant.

    Args:
        model_dir: a distill run directory (``student.json`` + ``student.safetensors``;
            ``projector.safetensors`` for ``projection``; ``config.yaml`` supplies mean/std
            and the default ``data``/``calib`` when its folders exist here).
        formats: "onnx", "openvino", "executorch" (a comma-separated string or a sequence).
        int8: add ``onnx_int8`` / ``onnx_fused_int8`` (ONNX Runtime dynamic INT8 of each
            graph) / ``openvino_int8`` / ``executorch_int8`` (static PTQ on ``calib`` images).
        fp16: add ``openvino_fp16`` (FP16 weights, f32 inference).
        calib: image folder for calibration (default: the train split of ``data``).
        data: labeled split folder or "digits" for the accuracy gate (default: the run's
            config data when it is labeled and present; without any, the gate is skipped and
            INT8 variants are exported unverified, never as the default variant).
        min_cosine: parity threshold for the FP32 variants (batch 1 and 8).
        max_drop: largest allowed k-NN top-1 drop, in points, against torch FP32.
        recovery_attempts: an INT8 variant over ``max_drop`` is requantized with its most
            sensitive layers in float, measured again up to this many times (0: no recovery).

    Returns:
        ``{"bundle", "name", "manifest", "validation", "rows", "default_variant"}``.
        Raises :class:`GateFailed` (an EdgeDistillError, carrying the report) when a gate fails.
    """
    from edgedistill.progress import stderr_console
    from edgedistill.utils import directory_lock

    con = console if console is not None else stderr_console(quiet=not progress)
    if "executorch" in parse_formats(formats):  # before anything is created at --out
        from edgedistill.export.executorch import require_executorch

        require_executorch()
    target = bundle_target(model_dir, out_root, name)
    check_out_root(target)
    with directory_lock(target) as leftovers:
        if leftovers:
            con.print(f"removed what an interrupted export left: {', '.join(leftovers)}", highlight=False)
        plan = plan_export(model_dir, out_root=out_root, name=name, formats=formats, data=data, calib=calib,
                           img_size=img_size, force=force, console=con, int8=int8, fp16=fp16, opset=opset,
                           calib_size=calib_size, calib_method=calib_method, projection=projection,
                           min_cosine=min_cosine, max_drop=max_drop, int8_hint=int8_hint, batch_size=batch_size,
                           num_workers=num_workers, threads=threads, recovery_attempts=recovery_attempts)
        con.print(f"exporting [bold]{plan.run.path}[/] -> [bold]{plan.bundle_dir}[/]: {', '.join(plan.variants)} "
                  f"({plan.img_size}px, opset {opset}{', projection' if projection else ''})")
        manifest = _write_bundle(plan, con, progress)
    con.print(f"bundle written: [bold]{plan.bundle_dir}[/] (default variant {manifest['default_variant']})")
    return {"bundle": str(plan.bundle_dir), "name": plan.name, "manifest": manifest,
            "validation": manifest["validation"], "rows": summary_rows(manifest),
            "default_variant": manifest["default_variant"]}


def _write_bundle(plan: ExportPlan, con: Any, progress: bool) -> dict[str, Any]:
    """Steps 2 to 6 inside the temporary directory; the manifest written."""
    from edgedistill.export.images import load_arrays, pick_indices
    from edgedistill.progress import progress_bar
    from edgedistill.runtime.manifest import read_manifest
    from edgedistill.utils import atomic_directory, atomic_write_json, disk_errors

    o = plan.options
    with atomic_directory(plan.bundle_dir, replace=o["replace"],
                          exists_hint=" (rerun with --force to replace it)") as work, \
            disk_errors(plan.bundle_dir, "export"):
        built = Built(work)
        with progress_bar(con, enabled=progress) as bar:
            build_variants(plan, built, FP_VARIANTS)
            parity_x, parity_pil = load_arrays(plan.parity_ds, pick_indices(len(plan.parity_ds), PARITY_IMAGES, 1),
                                               plan.spec)
            parity = ParityGate(plan.graph, parity_x, plan.output_names, o["min_cosine"], o["threads"],
                                plan.parity_source)
            for variant in built.files:
                parity.check(built, variant)
            if parity.failures():
                raise GateFailed("parity gate failed: " + "; ".join(parity.failures()),
                                 gate_report(parity, None, o["max_drop"], passed=False))
            _build_int8(plan, built, bar)
            for variant in INT8_VARIANTS:
                if variant in built.files:
                    parity.check(built, variant)
        accuracy = _accuracy_gate(plan, built, progress)
        report = gate_report(parity, accuracy, o["max_drop"], passed=True)
        if accuracy is not None and accuracy.failures():
            report["passed"] = False
            raise GateFailed("accuracy gate failed: " + "; ".join(accuracy.failures()) + _tried(built), report)
        if "onnx" not in plan.formats:
            built.onnx_fp32.unlink(missing_ok=True)  # only OpenVINO's source
        manifest = build_manifest(plan, built, report, parity_pil[0], parity.references[1])
        atomic_write_json(work / "manifest.json", manifest)
        atomic_write_json(work / "validation.json", report)
        read_manifest(work, verify=True)  # the reader apps use must accept what we wrote
    return manifest


def _build_int8(plan: ExportPlan, built: Built, bar: Any) -> None:
    """Calibration images through the app's preprocessing, then the INT8 variants."""
    from edgedistill.export.images import load_arrays, pick_indices

    if not plan.options["int8"]:
        return
    calib_x, _ = load_arrays(plan.calib_ds, pick_indices(len(plan.calib_ds), int(plan.options["calib_size"]), 0),
                             plan.spec, progress=bar, description="calibration images")
    built.calibration = {"source": plan.calib_source, "images": int(len(calib_x)),
                         "requested": int(plan.options["calib_size"]),
                         "preprocessing": "edgedistill.runtime.preprocess (the manifest's preprocessing)"}
    built.calibration_images = calib_x
    build_variants(plan, built, INT8_VARIANTS, calib=calib_x, bar=bar)


def _accuracy_gate(plan: ExportPlan, built: Built, progress: bool) -> AccuracyGate | None:
    """Every variant's k-NN; an INT8 variant over the limit gets its layers restored to float
    (``export.recovery``) before the verdict."""
    from edgedistill.export.recovery import RECOVERABLE, recover

    if plan.knn_pair is None:
        return None
    o = plan.options
    gate = AccuracyGate(plan.model, *plan.knn_pair, max_drop=o["max_drop"], batch_size=o["batch_size"],
                        num_workers=o["num_workers"], threads=o["threads"], progress=progress,
                        source=plan.knn_source)
    for variant in built.files:
        gate.check(built, variant)
        if variant in RECOVERABLE and not gate.figures[variant]["passed"] and o["recovery_attempts"] > 0:
            recover(plan, built, gate, variant, built.calibration_images, o["recovery_attempts"])
    return gate


def _tried(built: Built) -> str:
    """What accuracy control tried, for the failure message."""
    tried = []
    for name, entry in built.entries.items():
        control = entry.get("quantization", {}).get("accuracy_control")
        if control and not control["passed"]:
            counts = ", ".join(str(a["float_nodes"]) for a in control["attempts"]) or "none"
            tried.append(f"{name}: kept {counts} layer(s) in float ({control['method']})")
    return f" (accuracy control tried {'; '.join(tried)})" if tried else ""
