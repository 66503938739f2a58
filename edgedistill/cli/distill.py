"""``edgedistill distill``: AttnDistill from a self-supervised teacher into a ViT-Tiny student."""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.common import (config_options, console, interruptible, render_run_summary,
                                    resolve_training_config, resume_hint)


@click.command("distill")
@config_options
@click.option("--data", default=None, help="Image folder (labeled or not) or 'digits'. Sets data.path.")
@click.option("--teacher", default=None,
              help="Run directory, checkpoint file (.pth/.pt/.safetensors), timm hub name, or 'random'. Sets teacher.source.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
def command(config_path: Path | None, out: Path | None, overrides: tuple[str, ...], data: str | None,
            teacher: str | None, resume: bool) -> None:
    """AttnDistill: train a ViT-Tiny student from a frozen self-supervised teacher."""
    cfg, out = resolve_training_config(config_path, overrides, {"data": {"path": data}, "teacher": {"source": teacher}},
                                       out, resume)
    from edgedistill.train.stages import distill

    con = console()
    with interruptible(lambda: resume_hint("distill", out)):
        summary = distill(cfg, out, resume=resume, console=con)
    if summary["is_main"]:
        render_run_summary(con, "distill", summary)
