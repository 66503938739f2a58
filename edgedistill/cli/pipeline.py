"""``edgedistill pipeline CONFIG``: pretrain, distill, eval, export and bench from one YAML file."""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.common import console
from edgedistill.rundir import RUNS_ROOT


@click.command("pipeline")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--runs", "runs_root", type=click.Path(file_okay=False, path_type=Path), default=RUNS_ROOT,
              show_default=True, help="Root of the run directories.")
@click.option("--export-root", type=click.Path(file_okay=False, path_type=Path), default=Path("export"),
              show_default=True, help="Root of the bundles.")
def command(config_path: Path, overrides: tuple[str, ...], runs_root: Path, export_root: Path) -> None:
    """Every stage from one config; stages already done are skipped on a re-run."""
    from edgedistill.config import build_config

    cfg = build_config(config_path, overrides)
    from edgedistill.bench.report import render_table
    from edgedistill.cli.common import deploy_step, interruptible, next_step, results_console
    from edgedistill.pipeline import run_pipeline
    from edgedistill.pipeline.report import render_summary

    con = console()
    hint = (f"`edgedistill pipeline {config_path}` continues where it stopped (finished stages are skipped, "
            "a training stage resumes from its last checkpoint)")
    with interruptible(lambda: hint):
        result = run_pipeline(cfg, runs_root=runs_root, export_root=export_root, console=con)
    # the results on stdout, full width when it is a log file (`make demo > log.txt`)
    out = results_console()
    if result["bench"] is not None:
        render_table(result["bench"], out)
    render_summary(out, result)
    if "export" in cfg.pipeline.stages:
        next_step(out, deploy_step(export_root / cfg.run.name))
