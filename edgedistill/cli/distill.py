"""``edgedistill distill``: AttnDistill from a self-supervised teacher into a ViT-Tiny student."""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.common import (check_hub_teacher, config_options, console, finish_training, interruptible,
                                    resolve_training_config, resume_hint, shell_words)


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
    check_hub_teacher(cfg.teacher.source)  # offline: one line in seconds, before torch is imported
    from edgedistill.train.stages import closing_knn, distill

    con = console()
    with interruptible(lambda: resume_hint("distill", out)):
        summary = distill(cfg, out, resume=resume, console=con)
        if summary["is_main"] and summary["complete"]:  # with a labeled validation split: the baseline too
            summary["knn"] = closing_knn(cfg, out)
    # labeled data with a validation split: the student was scored, so eval is next
    then = (("eval", "knn", "--model", out, "--data", cfg.data.path) if summary.get("knn")
            else ("export", "--model", out, "--int8"))
    finish_training("distill", out, summary, shell_words("edgedistill", *then))
