"""onnxruntime-web in headless Chromium (``bench --device browser``): the bundle's ONNX variants
of standard operators, timed inside the bench page of the web deploy example (:mod:`.page`),
WASM with SIMD at each thread count and WebGPU where the browser has an adapter, beside the
native rows of the same thread count. It builds no format of its own."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.base import Runtime
from edgedistill.runtime.rows import RowPlanner

if TYPE_CHECKING:
    from edgedistill.runtime.manifest import VariantEntry

__all__ = ["RUNTIME", "Browser"]

DEVICE = "browser"


class Browser(Runtime):
    name = "onnxruntime-web"
    label = "onnxruntime-web"
    reads = ("onnx",)
    default = False
    device = DEVICE
    marker = "^"
    report_note = "timed inside the page; peak MB: the browser's processes, summed"

    @property
    def install_hint(self) -> str:
        return "bash .ci/install-deploy-deps.sh (Chromium, node and the web example's npm packages)"

    def missing(self, build: bool = False) -> str | None:
        from edgedistill.runtime.browser.page import browser_problem

        return browser_problem()

    def require(self, build: bool = False) -> None:
        problem = self.missing()
        if problem:
            raise EdgeDistillError(f"--device {DEVICE} needs headless Chromium with onnxruntime-web: {problem}")

    def probe(self) -> tuple[list[str] | None, str | None]:
        problem = self.missing()
        return (None, problem) if problem else (["chromium"], None)

    def unavailable_reason(self, error: str | None) -> str:
        return f"onnxruntime-web cannot run here: {error}"

    def target(self, device: str, found: list[str]) -> tuple[str | None, str | None]:
        return (DEVICE, None) if device == DEVICE else (None, f"{self.name} rows run with --device {DEVICE}")

    def rows(self, plan: RowPlanner, threads: int, name: str, entry: VariantEntry) -> None:
        """An ONNX variant at ``threads`` WASM threads (SIMD); WebGPU once, with the first thread
        count (the page reports it unavailable where there is no adapter)."""
        from edgedistill.runtime.browser.page import ENGINES

        if plan.target(self.name) is None:
            return None  # native rows only: nothing to say about a device not asked for
        if entry.runtimes is not None and self.name not in entry.runtimes:
            return plan.skip(self.name, name, entry.precision,
                             "its manifest entry does not list onnxruntime-web (ONNX Runtime contrib operators)")
        top1, delta = plan.knn(name)  # the export gated these kernels' native twins
        for engine in ENGINES if threads == plan.thread_counts[0] else ENGINES[:1]:
            plan.add(threads, backend=self.name, variant=name, precision=entry.precision, device=engine,
                     engine_label=f"{self.name} {engine}", model=str(plan.bundle_dir / entry.file),
                     size_bytes=plan.size(name), knn_top1=top1, knn_delta=delta,
                     extra={"engine": engine, "model_url": entry.file})

    def worker_command(self, spec: dict[str, Any], python: str) -> list[str]:
        from edgedistill.runtime.browser.page import worker_command

        return worker_command(spec)  # the page driver (node), speaking the workers' protocol

    def serve(self, bundle_dir: Path) -> Any:
        from edgedistill.runtime.browser.page import serve

        return serve(bundle_dir)


RUNTIME = Browser()
