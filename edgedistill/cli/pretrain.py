"""``edgedistill pretrain``: a DINO teacher on your own (unlabeled) images."""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.common import (config_options, console, finish_training, interruptible, resolve_training_config,
                                    resume_hint, shell_words)


@click.command("pretrain")
@config_options
@click.option("--data", default=None, help="Image folder (labels not needed) or 'digits'. Sets data.path.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
def command(config_path: Path | None, out: Path | None, overrides: tuple[str, ...], data: str | None, resume: bool) -> None:
    """DINO self-supervised pretraining: writes teacher.safetensors + teacher.json, usable as --teacher."""
    cfg, out = resolve_training_config(config_path, overrides, {"data": {"path": data}}, out, resume)
    from edgedistill.train.stages import pretrain

    con = console()
    with interruptible(lambda: resume_hint("pretrain", out)):
        summary = pretrain(cfg, out, resume=resume, console=con)
    finish_training("pretrain", out, summary, shell_words("edgedistill", "distill", "--teacher", out,
                                                          "--data", cfg.data.path))
