"""The records a benchmark passes between its parts and writes into its report (format
``edgedistill-bench/1``): typed dictionaries, so that they stay plain JSON objects on disk and
named, checked fields in the code (issue 25 reworks what they hold; the names live here)."""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["Skip", "RunSlice", "BatchStats", "RowResult", "ReportRow", "Baseline", "BenchReport"]


class _SkipRequired(TypedDict):
    backend: str
    variant: str
    precision: str
    reason: str


class Skip(_SkipRequired, total=False):
    """A row left out, and why (``unavailable``: the runtime, device or weights are missing)."""

    threads: int
    device: str
    unavailable: bool
    remote: str  # the SSH device (its label); absent: this machine


class RunSlice(TypedDict, total=False):
    """What one interleaved round asks of a row: a number of runs, or seconds (at least min_runs)."""

    runs: int
    seconds: float
    min_runs: int


class BatchStats(TypedDict, total=False):
    """One row at one batch size: latency percentiles (ms) over every timed run, throughput,
    the median of each round, and (``stats.add_ratios``) the ratios to the baseline."""

    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_ips: float | None
    round_p50_ms: list[float]
    round_spread: float | None
    speedup: float | None
    latency_ratio: float | None
    latency_ratio_by_round: dict[str, float] | None


class RowResult(TypedDict, total=False):
    """What a row's worker reported: cold start in parts, memory, settings, and each batch."""

    import_seconds: float | None
    load_seconds: float | None
    load_seconds_per_batch: dict[str, float] | None
    first_run_ms: float | None
    cold_start_seconds: float | None
    rss_after_import_mb: float | None
    peak_rss_mb: float | None
    peak_rss_all_mb: float | None
    output_shape: list[int] | None
    cold_start: dict[str, float] | None  # in parts, where the engine tells them
    settings: dict[str, Any] | None  # what the runtime was set to, and read back: free-form per runtime
    batches: dict[str, BatchStats]
    failed_batches: dict[str, str]  # batch size -> why it failed; that row's other batches stand


class ReportRow(RowResult, total=False):
    """A measured row of the report: the configuration, then its results."""

    id: str
    label: str
    backend: str
    engine: str
    variant: str
    precision: str
    inference_precision: str | None
    threads: int
    device: str
    file: str
    size_bytes: int | None
    knn_top1: float | None
    knn_delta: float | None
    baseline: bool
    remote: str | None  # the SSH device it ran on (its label, a key of ``BenchReport.remotes``); None: this machine


class Baseline(TypedDict):
    threads: int
    row: str
    label: str
    fallback_reason: str | None


class BenchReport(TypedDict):
    """The whole report (``bench --json``); ``machine``, ``settings`` and ``best`` are
    descriptive records, free-form by design."""

    format: str
    created: str
    seconds: float
    bundle: dict[str, Any]
    machine: dict[str, Any]
    settings: dict[str, Any]
    baselines: list[Baseline]
    rows: list[ReportRow]
    skipped: list[Skip]
    best: dict[str, Any]
    notes: list[str]
    remotes: dict[str, dict[str, Any]]  # the SSH devices by label: arch, CPU, cores, OS, Python, versions
