"""Benchmarks from a bundle: timing in fresh worker processes, the machine description,
reports and plots. Torch-free: only the torch baseline's own worker imports torch.

``runner.run_bench`` is the stage function the CLI calls and reads as its steps: ``plan``
(options, device targets, rows), ``process`` (the worker processes, loaded then measured in
interleaved rounds; ``worker`` is their side), ``stats`` (percentiles, baselines, ratios),
``report`` (table, JSON, CSV, plot). Importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_bench", "render_table", "write_json", "write_csv", "write_plot", "describe_machine"]

_HOMES = {"run_bench": "runner", "render_table": "report", "write_json": "report", "write_csv": "report",
          "write_plot": "report", "describe_machine": "machine"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"edgedistill.bench.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'edgedistill.bench' has no attribute {name!r}")
