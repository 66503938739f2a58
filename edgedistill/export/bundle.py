"""``export_bundle``: a distilled student -> ``export/<name>/`` with gated variants.

The steps, in order (the cheap gate first, so an impossible threshold fails fast):

1. plan: check every input, load the student, pick the images (``export.plan``);
2. FP32 (and FP16) variants, each built by its runtime (``export.variants``, ``runtime.registry``);
3. parity gate for the FP32 variants on real images, batch 1 and 8 (``export.gates``);
4. INT8 variants (calibrated on real images through the app's preprocessing where the recipe
   calibrates; ONNX Runtime's dynamic INT8 runs one image per call, its batch dependence measured);
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

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

from edgedistill.export.gates import PARITY_IMAGES, AccuracyGate, GateFailed, ParityGate, Validation, gate_report
from edgedistill.export.manifest import SummaryRow, build_manifest, recommendations, summary_rows
from edgedistill.export.plan import (ExportOptions, ExportPlan, bundle_target, check_out_root, parse_formats,
                                     plan_export, require_formats)
from edgedistill.export.variants import build_variants, new_build
from edgedistill.runtime.base import Build
from edgedistill.runtime.manifest import FORMATS, VARIANTS, Manifest
from edgedistill.runtime.registry import default_formats

__all__ = ["export_bundle", "ExportOptions", "ExportResult", "GateFailed", "FORMATS", "DEFAULT_FORMATS", "VARIANTS",
           "summary_rows"]

DEFAULT_FORMATS = default_formats()  # the opt-in ones (their own extras) are asked for by name


@dataclasses.dataclass
class ExportResult:
    """A written bundle: where, its manifest, the summary table's rows."""

    bundle: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def default_variant(self) -> str | None:
        return self.manifest.default_variant

    @property
    def validation(self) -> Validation:
        return Validation(**(self.manifest.validation or {}))

    @property
    def rows(self) -> list[SummaryRow]:
        return summary_rows(self.validation, self.manifest.variants)

    def recommended_lines(self) -> list[str]:
        """One ``Recommended for <runtime>: ...`` line per format of the bundle."""
        from edgedistill.runtime import registry
        from edgedistill.runtime.recommend import recommend_line

        return [recommend_line(choice, registry.for_format(fmt).label)
                for fmt, choice in recommendations(self.manifest.variants, self.validation).items()]


def export_bundle(model_dir: str | Path, *, out_root: str | Path = "export", name: str | None = None,
                  formats: str | Sequence[str] = DEFAULT_FORMATS, calib: str | Path | None = None,
                  data: str | Path | None = None, img_size: int | None = None, force: bool = False,
                  options: ExportOptions | None = None, progress: bool = True, console: Any = None,
                  **option_values: Any) -> ExportResult:
    """Export the student of ``model_dir`` into ``out_root/name`` and gate every variant.

    Args:
        model_dir: a distill run directory (``student.json`` + ``student.safetensors``;
            ``projector.safetensors`` for ``projection``; ``config.yaml`` supplies mean/std
            and the default ``data``/``calib`` when its folders exist here).
        formats: manifest formats of the registry (``registry.formats()``; a comma-separated
            string or a sequence). Each builds its runtime's variants: FP32 always, INT8 with
            ``int8``, FP16 with ``fp16``.
        calib: image folder for calibration (default: the train split of ``data``).
        data: labeled split folder or "digits" for the accuracy gate (default: the run's
            config data when it is labeled and present; without any, the gate is skipped and
            INT8 variants are exported unverified, never as the default variant).
        options: :class:`~edgedistill.export.plan.ExportOptions` (int8, fp16, opset,
            thresholds, ...); ``option_values`` set single fields of it (``int8=False``).

    Returns:
        The :class:`ExportResult`. Raises :class:`GateFailed` (an EdgeDistillError, carrying
        the report) when a gate fails.
    """
    from edgedistill.progress import stderr_console
    from edgedistill.utils import directory_lock

    options = dataclasses.replace(options or ExportOptions(), **option_values).check(img_size)
    con = console if console is not None else stderr_console(quiet=not progress)
    require_formats(parse_formats(formats))  # bad input fails before anything is created at --out
    target = bundle_target(model_dir, out_root, name)
    check_out_root(target)
    with directory_lock(target) as leftovers:
        if leftovers:
            con.print(f"removed what an interrupted export left: {', '.join(leftovers)}", highlight=False)
        plan = plan_export(model_dir, out_root=out_root, name=name, formats=formats, data=data, calib=calib,
                           img_size=img_size, force=force, console=con, options=options)
        con.print(f"exporting [bold]{plan.run.path}[/] -> [bold]{plan.bundle_dir}[/]: {', '.join(plan.variants)} "
                  f"({plan.img_size}px, opset {options.opset}{', projection' if options.projection else ''})")
        manifest = _write_bundle(plan, con, progress)
    con.print(f"bundle written: [bold]{plan.bundle_dir}[/] (default variant {manifest.default_variant})")
    return ExportResult(bundle=plan.bundle_dir, manifest=manifest)


def _write_bundle(plan: ExportPlan, con: Any, progress: bool) -> Manifest:
    """Steps 2 to 6 inside the temporary directory; the manifest written."""
    from edgedistill.export.images import load_arrays, pick_indices
    from edgedistill.progress import progress_bar
    from edgedistill.runtime.manifest import read_manifest
    from edgedistill.utils import atomic_directory, atomic_write_json, disk_errors

    o = plan.options
    with atomic_directory(plan.bundle_dir, replace=plan.replace,
                          exists_hint=" (rerun with --force to replace it)") as work, \
            disk_errors(plan.bundle_dir, "export"):
        with progress_bar(con, enabled=progress) as bar:
            build = new_build(plan, work, bar)
            build_variants(plan, build, quantized=False)
            parity_x, parity_pil = load_arrays(plan.parity_ds, pick_indices(len(plan.parity_ds), PARITY_IMAGES, 1),
                                               plan.spec)
            parity = ParityGate(plan.graph, parity_x, plan.output_names, o.min_cosine, o.threads, plan.parity_source)
            for variant in build.files:
                parity.check(build, variant)
            if parity.failures():
                raise GateFailed("parity gate failed: " + "; ".join(parity.failures()),
                                 gate_report(parity, None, o.max_drop, passed=False))
            for variant in _build_int8(plan, build, bar):
                parity.check(build, variant)
        accuracy, not_tried = _accuracy_gate(plan, build, progress, con)
        report = gate_report(parity, accuracy, o.max_drop, passed=True)
        if accuracy is not None and accuracy.failures():
            report["passed"] = False
            raise GateFailed("accuracy gate failed: " + "; ".join(accuracy.failures()) + _tried(plan, build, not_tried),
                             report)
        build.finish()
        manifest = build_manifest(plan, build, report, parity_pil[0], parity.references[1])
        atomic_write_json(work / "manifest.json", manifest.as_json())
        atomic_write_json(work / "validation.json", report)
        read_manifest(work, verify=True)  # the reader apps use must accept what we wrote
    return manifest


def _build_int8(plan: ExportPlan, build: Build, bar: Any) -> list[str]:
    """Calibration images through the app's preprocessing, then the INT8 variants."""
    from edgedistill.export.images import load_arrays, pick_indices

    if not plan.options.int8:
        return []
    calib_x, _ = load_arrays(plan.calib_ds, pick_indices(len(plan.calib_ds), int(plan.options.calib_size), 0),
                             plan.spec, progress=bar, description="calibration images")
    build.calibration = {"source": plan.calib_source, "images": int(len(calib_x)),
                         "requested": int(plan.options.calib_size),
                         "preprocessing": "edgedistill.runtime.preprocessing (the manifest's preprocessing)"}
    build.calibration_images = calib_x
    return build_variants(plan, build, quantized=True)


def _accuracy_gate(plan: ExportPlan, build: Build, progress: bool, con: Any) -> tuple[AccuracyGate | None, list[str]]:
    """Every variant's k-NN; INT8 variants over the limit get their layers restored to float
    (``export.recovery``) before the verdict, unless a failed variant has no accuracy control:
    then the verdict stands at once. Returns the gate and those failed variants."""
    from edgedistill.export.recovery import recover, recoverable

    if plan.knn_pair is None:
        return None, []
    o = plan.options
    gate = AccuracyGate(plan.model, *plan.knn_pair, max_drop=o.max_drop, batch_size=o.batch_size,
                        num_workers=o.num_workers, threads=o.threads, progress=progress, source=plan.knn_source)
    for variant in build.files:
        gate.check(build, variant)
    failed = [v for v in build.files if not gate.figures[v]["passed"]]
    hopeless = [v for v in failed if not recoverable(plan, build, v)]
    if hopeless:  # accuracy control of the others cannot change the verdict: not worth its minutes
        return gate, hopeless
    deadline = time.monotonic() + float(o.recovery_seconds)  # one bound for all of them
    for variant in failed:
        recover(plan, build, gate, variant, con, deadline)
    return gate, []


def _tried(plan: ExportPlan, build: Build, not_tried: list[str]) -> str:
    """What accuracy control tried, for the failure message (or why it tried nothing)."""
    if not_tried and int(plan.options.recovery_attempts) == 0:
        return " (accuracy control off: --recovery-attempts 0)"
    if not_tried:
        return f" ({', '.join(not_tried)} {'has' if len(not_tried) == 1 else 'have'} no accuracy control: none was tried)"
    tried = []
    for name, entry in build.entries.items():
        control = (entry.quantization or {}).get("accuracy_control")
        if control and not control["passed"]:
            if control.get("stopped"):
                tried.append(f"{name}: {control['method']}, stopped {control['stopped']}")
                continue
            counts = ", ".join(str(a["float_nodes"]) for a in control["attempts"])
            tried.append(f"{name}: kept {counts} layer(s) in float ({control['method']})")
    return f" (accuracy control tried {'; '.join(tried)})" if tried else ""
