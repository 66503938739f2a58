"""A benchmark row and what a runtime deciding its rows is given: the contract between
``bench``'s planner and each runtime's ``Runtime.rows`` (``runtime.base``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:
    from edgedistill.runtime.manifest import Manifest

__all__ = ["Row", "RowPlanner", "precision_label"]


def precision_label(precision: str, inference_precision: str | None = None) -> str:
    """The one spelling of a precision in every table, id and plot: ``int8``, or ``int8@bf16``
    where the runtime computes the ops it leaves in floating point at a precision of its own."""
    return f"{precision}@{inference_precision}" if inference_precision else precision


@dataclass
class Row:
    """One measured configuration of ``bench`` (one worker process)."""

    backend: str
    variant: str
    precision: str
    threads: int
    device: str
    model: str
    weights: str | None = None
    inference_precision: str | None = None
    size_bytes: int | None = None
    knn_top1: float | None = None
    knn_delta: float | None = None  # top-1 minus torch FP32's, in points (the export's)
    engine_label: str | None = None  # the backend as the report shows it, when it says more (an engine of it)
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific keys of the worker's spec
    remote: str | None = None  # the SSH device it runs on (its label); None: this machine

    @property
    def engine(self) -> str:
        return self.engine_label or self.backend

    @property
    def id(self) -> str:
        where = f"{self.remote}/" if self.remote else ""
        return (f"{where}{self.engine.replace(' ', '/')}:{self.variant}:"
                f"{precision_label(self.precision, self.inference_precision)}:{self.threads}t")

    @property
    def label(self) -> str:
        if self.backend == "torch":
            return f"torch eager {self.precision}"
        return f"{self.engine} {self.variant}" + (f" on {self.remote}" if self.remote else "")


class RowPlanner(Protocol):
    """What ``bench``'s planner offers a runtime deciding its rows for one bundle."""

    manifest: "Manifest"
    bundle_dir: Path
    precisions: Sequence[str]
    thread_counts: Sequence[int]  # measured, in order
    native_bf16: bool
    cpu: bool  # every runtime measures on the CPU (no accelerator asked for)

    def target(self, runtime: str) -> str | None: ...
    def reason(self, runtime: str) -> str: ...
    def add(self, threads: int, **row: Any) -> None: ...
    def skip(self, backend: str, variant: str, precision: str, reason: str) -> None: ...
    def knn(self, variant: str | None, fallback: str | None = None) -> tuple[float | None, float | None]: ...
    def size(self, variant: str) -> int: ...
    def has_variant(self, fmt: str, precision: str) -> bool: ...
