"""The bundle's variants, built by the runtime that owns each (``runtime.registry``: a new
variant is a line in its runtime's ``variants`` and a branch of its build step) and opened the
way an app opens them, through the runtime's embedder, which is how the gates judge them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

from edgedistill.export.plan import ExportPlan
from edgedistill.runtime import registry
from edgedistill.runtime.base import Build

__all__ = ["new_build", "build_variants", "embedders_for"]


def new_build(plan: ExportPlan, work: Path, progress: Any) -> Build:
    """The :class:`~edgedistill.runtime.base.Build` the runtimes' build steps write into."""
    from edgedistill.export.onnx import export_onnx

    def exporter(module: Any, path: Path, extra: dict[str, Any]) -> dict[str, Any]:
        return export_onnx(module, path, plan.img_size, int(plan.options.opset), **extra)

    return Build(work=work, graph=plan.graph, img_size=plan.img_size, output_names=plan.output_names,
                 options=plan.options.build, export_onnx=exporter, progress=progress)


def build_variants(plan: ExportPlan, build: Build, quantized: bool) -> list[str]:
    """Build the planned variants of one stage (float ones before the parity gate, INT8 ones
    after it, calibrated) in manifest order; returns their names."""
    done = []
    for runtime, variant in plan.planned:
        if variant.quantized == quantized:
            runtime.build(variant, build)
            done.append(variant.name)
    return done


def embedders_for(build: Build, name: str, outputs: Sequence[str], threads: int | None,
                  **settings: Any) -> dict[str, Any]:
    """The app's path to a built variant: one runtime embedder per output (``settings``:
    what the runtime's embedder takes beyond the manifest entry, e.g. another precision)."""
    entry = build.entries[name]
    open_one = functools.partial(registry.for_format(entry.format).open_variant, build.files[name], entry,
                                 threads=threads, outputs=list(outputs), name=name, **settings)
    return {o: open_one(output=o) for o in outputs}
