"""The two export gates, judged through the runtime embedders an app uses.

* Parity: a variant's outputs against the torch model's on the same real images, at batch 1
  (image by image) and batch 8: the smallest per-image cosine similarity and the largest
  absolute difference. Gated (``min_cosine``) for FP32 variants; reported for the others,
  which the accuracy gate judges instead.
* Accuracy: weighted k-NN top-1 (DINO protocol, k = 20) of every variant on a labeled
  train/val pair, against the torch FP32 figure: ``knn_delta`` = the variant's top-1 minus torch
  FP32's, in points (positive: better than torch); below ``-max_drop`` fails. The
  features and the k-NN are ``eval.features.knn_of``'s, as for ``edgedistill eval knn``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypedDict

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.base import Build
from edgedistill.runtime.knn import compare
from edgedistill.runtime.recommend import knn_delta

__all__ = ["PARITY_BATCHES", "PARITY_IMAGES", "GateFailed", "ParityFigures", "KnnFigures", "Validation", "parity_of",
           "parity_failures", "knn_failures", "ParityGate", "AccuracyGate", "gate_report"]

PARITY_BATCHES = (1, 8)
PARITY_IMAGES = 8
QUICK_RUNS = 20  # batch-1 calls of the export's quick timing (after one warm-up call)


class ParityFigures(TypedDict, total=False):
    """One variant's parity: the worst figures over outputs and batch sizes, then each."""

    min_cosine: float
    max_abs: float
    images: int
    batch_sizes: list[int]
    outputs: dict[str, dict[str, dict[str, float]]]  # output -> "batch_8" -> min_cosine, mean_cosine, max_abs
    gated: bool
    passed: bool | None


class KnnFigures(TypedDict, total=False):
    """One variant's k-NN (``eval.features.knn_of``'s figures) against torch FP32's; a variant
    judged under a further setting carries its figures too, keyed ``<setting>_fallback``."""

    top1: float
    top5: float | None
    per_k: dict[str, dict[str, float | None]]
    k: int
    k_used: int
    temperature: float
    reference_top1: float
    knn_delta: float  # top1 - reference_top1, in points (positive: better than torch FP32)
    passed: bool
    inference_precision_hint: str
    f32_fallback: KnnFigures


class Validation(TypedDict, total=False):
    """The manifest's ``validation``: both gates' figures and the verdict."""

    passed: bool
    parity: dict[str, Any]  # min_cosine, source, variants: {name: ParityFigures}
    timing: dict[str, Any]  # p50_ms: {name: ms} of one image per call, batch, runs, threads, note
    knn: dict[str, Any]  # the protocol and data, torch_fp32, max_drop, variants: {name: KnnFigures} (or skipped)


class GateFailed(EdgeDistillError):
    """A gate failed; ``report`` holds every figure measured (for --json and the table)."""

    def __init__(self, message: str, report: Validation) -> None:
        super().__init__(message)
        self.report = report


def _run_batches(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(embed(images[i:i + batch]), dtype=np.float32)
                           for i in range(0, len(images), batch)])


def parity_of(embedders: dict[str, Any], references: dict[int, dict[str, np.ndarray]], images: np.ndarray,
              batches: Sequence[int] = PARITY_BATCHES) -> ParityFigures:
    """Parity of one variant: ``embedders`` maps output name -> embedder of that output,
    ``references[batch][output]`` the torch outputs for ``images`` run at that batch size.

    Returns ``{"min_cosine", "max_abs", "outputs": {name: {"batch_1": {...}, "batch_8": {...}}}}``
    with the headline figures the worst over outputs and batch sizes."""
    outputs: dict[str, Any] = {}
    worst_cos, worst_abs = float("inf"), 0.0
    for name, embedder in embedders.items():
        per_batch = {}
        for batch in batches:
            figures = compare(references[batch][name], _run_batches(embedder.embed, images, batch))
            per_batch[f"batch_{batch}"] = figures
            worst_cos = min(worst_cos, figures["min_cosine"]) if np.isfinite(figures["min_cosine"]) else float("nan")
            worst_abs = max(worst_abs, figures["max_abs"])
        outputs[name] = per_batch
    return {"min_cosine": worst_cos, "max_abs": worst_abs, "images": int(len(images)),
            "batch_sizes": list(batches), "outputs": outputs}


def parity_failures(parity: dict[str, ParityFigures], min_cosine: float) -> list[str]:
    """One phrase per gated variant below ``min_cosine`` (NaN fails too)."""
    failed = []
    for variant, figures in parity.items():
        if not figures.get("gated"):
            continue
        cos = figures["min_cosine"]
        if not (cos >= min_cosine):
            digits = next((d for d in range(4, 17) if f"{cos:.{d}g}" != f"{min_cosine:.{d}g}"), 17)  # enough to differ
            failed.append(f"{variant} cosine {cos:.{digits}g} < {min_cosine:.{digits}g} (max-abs {figures['max_abs']:.3g})")
    return failed


def knn_failures(knn: dict[str, KnnFigures], max_drop: float) -> list[str]:
    """One phrase per variant whose k-NN top-1 is more than ``max_drop`` points below torch FP32's."""
    failed = []
    for variant, figures in knn.items():
        checks = [(variant, figures)]
        fallbacks = [k for k, v in figures.items() if k.endswith("_fallback") and isinstance(v, dict)]
        if fallbacks:  # a variant gated under several settings
            hint = figures.get("inference_precision_hint")
            checks = [(f"{variant} ({hint})" if hint else variant, figures),
                      *((f"{variant} ({k.replace('_', ' ')})", figures[k]) for k in fallbacks)]
        for label, result in checks:
            if not (result["knn_delta"] >= -max_drop):
                failed.append(f"{label} lost {-result['knn_delta']:.2f} points of k-NN top-1 "
                              f"({result['top1']:.2f}% vs torch {result['reference_top1']:.2f}%, max {max_drop:g})")
    return failed


class ParityGate:
    """Torch references for a few real images, then each variant against them."""

    def __init__(self, graph: Any, images: np.ndarray, output_names: Sequence[str], min_cosine: float,
                 threads: int | None, source: str) -> None:
        import torch

        self.images, self.output_names, self.min_cosine = images, list(output_names), min_cosine
        self.threads, self.source = threads, source
        with torch.inference_mode():
            whole = graph.outputs(torch.from_numpy(images))
            singles = [graph.outputs(torch.from_numpy(images[i:i + 1])) for i in range(len(images))]
        self.references = {
            max(PARITY_BATCHES): {o: whole[o].numpy() for o in self.output_names},
            1: {o: np.concatenate([s[o].numpy() for s in singles]) for o in self.output_names},
        }
        self.figures: dict[str, ParityFigures] = {}
        self.timing: dict[str, float] = {}  # variant -> p50 ms of one image per call (the quick timing)

    def check(self, build: Build, name: str) -> None:
        """The variant's parity, and a quick timing of its session while it is open: what the
        recommendation ranks by when no bench exists."""
        from edgedistill.export.variants import embedders_for

        embedders = embedders_for(build, name, self.output_names, self.threads)
        figures = parity_of(embedders, self.references, self.images)
        self.timing[name] = quick_timing(embedders[self.output_names[0]].embed, self.images[:1])
        figures["gated"] = build.entries[name].precision == "fp32"
        figures["passed"] = bool(figures["min_cosine"] >= self.min_cosine) if figures["gated"] else None
        self.figures[name] = figures

    def failures(self) -> list[str]:
        return parity_failures(self.figures, self.min_cosine)


class AccuracyGate:
    """k-NN top-1 of torch FP32 once, then of each variant (and a bf16-hint variant
    again in f32, what a CPU without native bf16 runs)."""

    def __init__(self, model: Any, bank: Any, queries: Any, *, max_drop: float, batch_size: int,
                 num_workers: int, threads: int | None, progress: bool, source: str) -> None:
        from edgedistill.eval.features import InMemorySplit, TorchEmbedder

        self.max_drop, self.threads, self.source = max_drop, threads, source
        self.common = dict(num_classes=len(bank.classes), batch_size=batch_size, num_workers=num_workers,
                           progress=progress)
        crop = bank.transform.spec["crop"]
        crop = (crop, crop) if isinstance(crop, int) else crop
        if InMemorySplit.fits(bank, crop) and InMemorySplit.fits(queries, crop):  # decoded once for every variant
            bank = InMemorySplit(bank, progress=progress, description="k-NN bank images")
            queries = InMemorySplit(queries, progress=progress, description="k-NN query images")
        self.bank, self.queries = bank, queries
        self.reference = self._knn(TorchEmbedder(model, name="torch_fp32"), "torch_fp32")
        self.figures: dict[str, KnnFigures] = {}

    def _knn(self, embedder: Any, label: str) -> KnnFigures:
        from edgedistill.eval.features import knn_of

        figures = knn_of(embedder, self.bank, self.queries, label=label, **self.common)
        figures.pop("extraction")
        figures["k"] = figures.pop("headline_k")
        return figures

    def _gate(self, build: Build, name: str, label: str, **settings: Any) -> KnnFigures:
        from edgedistill.export.onnx import EMBEDDING
        from edgedistill.export.variants import embedders_for

        embedder = embedders_for(build, name, [EMBEDDING], self.threads, **settings)[EMBEDDING]
        figures = self._knn(embedder, label)
        figures["reference_top1"] = self.reference["top1"]
        figures["knn_delta"] = knn_delta(figures["top1"], self.reference["top1"])
        figures["passed"] = bool(figures["knn_delta"] >= -self.max_drop)
        return figures

    def check(self, build: Build, name: str) -> KnnFigures:
        """The variant's k-NN figures (also kept in :attr:`figures`): as its manifest entry
        says to run it, and under each setting its runtime says another device may run it
        with (``runtime.gate_fallbacks``), all of which must pass."""
        from edgedistill.runtime import registry

        entry = build.entries[name]
        figures = self._gate(build, name, name)
        fallbacks = registry.for_format(entry.format).gate_fallbacks(entry)
        if fallbacks and entry.inference_precision_hint:
            figures["inference_precision_hint"] = entry.inference_precision_hint
        for key, settings in fallbacks.items():
            figures[key] = self._gate(build, name, f"{name} ({key.replace('_', ' ')})", **settings)
            figures["passed"] = figures["passed"] and figures[key]["passed"]
        self.figures[name] = figures
        return figures

    def failures(self) -> list[str]:
        return knn_failures(self.figures, self.max_drop)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "train_images": len(self.bank), "val_images": len(self.queries),
                "classes": self.common["num_classes"], "k": self.reference["k"],
                "k_used": self.reference["k_used"], "temperature": self.reference["temperature"],
                "protocol": "DINO weighted k-NN on L2-normalized embeddings", "torch_fp32": self.reference}


def quick_timing(embed: Callable[[np.ndarray], Any], image: np.ndarray, runs: int = QUICK_RUNS) -> float:
    """p50 milliseconds of ``embed(image)`` over ``runs`` calls after a warm-up call: a rough
    figure on the exporting machine (``bench`` measures properly)."""
    import time

    embed(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        embed(image)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 4)


def gate_report(parity: ParityGate, accuracy: AccuracyGate | None, max_drop: float, *, passed: bool) -> Validation:
    """The ``validation`` section of the manifest (and ``--json``)."""
    knn_variants = accuracy.figures if accuracy is not None else {}
    return {
        "passed": passed,
        "parity": {"min_cosine": parity.min_cosine, "source": parity.source, "variants": parity.figures},
        "timing": {"p50_ms": parity.timing, "batch": 1, "runs": QUICK_RUNS, "threads": parity.threads,
                   "note": "a quick timing while the parity gate's session was open; bench measures properly"},
        "knn": ({**accuracy.describe(), "max_drop": max_drop, "variants": knn_variants} if accuracy is not None
                else {"skipped": "no labeled data (pass --data DIR with train/ and val/ class folders)",
                      "max_drop": max_drop, "variants": knn_variants}),
    }
