"""OpenVINO: the ``openvino`` format (IR converted from the FP32 ONNX graph, FP32 and FP16
weights, NNCF INT8 with a bf16 hint where the export CPU has native bf16), compiled models
for the gates, ``eval`` and the deploy examples (``engine``), and bench rows for its own
variants and the ONNX ones it loads, on any OpenVINO device."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Sequence

from edgedistill.runtime.base import Runtime, Variant
from edgedistill.runtime.rows import RowPlanner

if TYPE_CHECKING:
    from edgedistill.runtime.manifest import VariantEntry

__all__ = ["RUNTIME", "OpenVino"]

F32 = "f32"  # the precision hint of true FP32 arithmetic


class OpenVino(Runtime):
    name = "openvino"
    label = "OpenVINO"
    format = "openvino"
    reads = ("openvino", "onnx")
    suffixes = (".xml",)
    variants = (
        Variant("openvino_fp32", "fp32"),
        Variant("openvino_fp16", "fp16", option="fp16", bytes_per_param=2.0),
        Variant("openvino_int8", "int8", option="int8", bytes_per_param=1.3),
    )
    module = "openvino"
    build_modules = ("nncf",)
    extra = "openvino"
    packages = ("openvino", "nncf")
    engine = "edgedistill.runtime.openvino.engine"
    cpu_target = "CPU"
    accelerators = True
    marker = "D"
    int8_recipe = "NNCF static INT8, calibrated on --calib images"

    def manifest_files(self, path: Path) -> dict[str, Path]:
        return {"weights": path.with_suffix(".bin")}

    def variant_files(self, entry: VariantEntry, bundle_dir: Path) -> list[tuple[Path, str | None]]:
        weights = entry.weights_file or str(PurePosixPath(entry.file).with_suffix(".bin"))
        return [(bundle_dir / entry.file, entry.sha256), (bundle_dir / weights, entry.weights_sha256)]

    def embedder(self, path: Path, *, threads: int | None = None, output: str = "embedding",
                 outputs: Sequence[str] = ("embedding",), name: str | None = None,
                 entry: VariantEntry | None = None, **settings: Any) -> Any:
        """``precision``: the inference precision hint (default: the one the manifest entry
        records, which the export validated; else true FP32)."""
        from edgedistill.runtime.openvino.embedder import OpenVinoEmbedder

        recorded = entry.inference_precision_hint if entry is not None else None
        precision = settings.pop("precision", recorded or F32)
        weights = settings.pop("weights", None)
        return OpenVinoEmbedder(path, threads=threads, precision=precision, output=output, name=name,
                                weights=weights, **settings)

    def gate_fallbacks(self, entry: VariantEntry) -> dict[str, dict[str, Any]]:
        # a device without native bf16 runs a bf16-hint variant in f32: the gate judges that too
        hint = entry.inference_precision_hint
        return {"f32_fallback": {"precision": F32}} if hint is not None and hint != F32 else {}

    def probe(self) -> tuple[list[str] | None, str | None]:
        try:
            import openvino as ov

            return list(ov.Core().available_devices), None
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def target(self, device: str, found: list[str]) -> tuple[str | None, str | None]:
        if device == "cpu":
            return self.cpu_target, None
        upper = device.upper()
        if upper in found or any(d.split(".")[0] == upper for d in found) or \
                upper.split(":")[0] in ("AUTO", "MULTI", "HETERO"):
            return upper, None
        return None, f"no OpenVINO device {upper}"

    def rows(self, plan: RowPlanner, threads: int, name: str, entry: VariantEntry) -> None:
        """Its own variants at their recorded hint (a bf16 one again in f32, its fallback on CPUs
        without bf16; fp32 and f32-hint int8 again in bf16 where the CPU has it); ONNX variants
        it has no counterpart of (ORT's INT8 differs from NNCF's; the FP32 graph is the one the
        FP32 IR came from), where their operators are standard."""
        if entry.format != self.format and entry.runtimes is not None and self.name not in entry.runtimes:
            return  # contrib operators only ONNX Runtime has
        device = plan.target(self.name)
        if device is None:
            return plan.skip(self.name, name, entry.precision, plan.reason(self.name))
        if entry.format != self.format:
            prec = entry.precision
            if prec == "int8" or not plan.has_variant(str(self.format), prec):
                plan.add(threads, backend=self.name, variant=name, precision=prec, device=device,
                         model=str(plan.bundle_dir / entry.file), inference_precision=F32,
                         size_bytes=plan.size(name))
            return
        self._own_rows(plan, threads, name, entry, device)

    def _own_rows(self, plan: RowPlanner, threads: int, name: str, entry: VariantEntry, device: str) -> None:
        prec, hint = entry.precision, entry.inference_precision_hint or F32
        common = dict(backend=self.name, variant=name, device=device, model=str(plan.bundle_dir / entry.file),
                      weights=str(self.variant_files(entry, plan.bundle_dir)[1][0]), size_bytes=plan.size(name))
        top1, delta = plan.knn(name)  # the gate measured each variant at its recorded hint
        plan.add(threads, precision=prec, inference_precision=hint, knn_top1=top1, knn_delta=delta, **common)
        if hint == "bf16":  # what a device without native bf16 runs
            top1, delta = plan.knn(name, fallback="f32_fallback")
            plan.add(threads, precision=prec, inference_precision=F32, knn_top1=top1, knn_delta=delta, **common)
        if prec == "fp32" and "bf16" in plan.precisions:
            if plan.cpu and plan.native_bf16:
                plan.add(threads, precision="bf16", inference_precision="bf16", **common)
            else:
                plan.skip(self.name, name, "bf16", "this CPU has no native bf16" if plan.cpu else
                          "bf16 rows run on CPU only")
        if prec == "int8" and hint != "bf16" and plan.cpu and plan.native_bf16:
            # the layers NNCF left in floating point (norms, softmax, GELU, residual adds) in
            # bf16: faster here, but not what the accuracy gate validated (no k-NN)
            plan.add(threads, precision="int8", inference_precision="bf16", **common)


RUNTIME = OpenVino()
