"""Where runs go by default (torch-free, so the CLI can resolve it before heavy imports)."""

from __future__ import annotations

from pathlib import Path

RUNS_ROOT = Path("runs")


def default_run_dir(cfg) -> Path:
    return RUNS_ROOT / cfg.run.name
