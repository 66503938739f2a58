"""A training run's on-disk state: the checkpoint a resume starts from, and what must hold
before the first step (something left to train, room on the disk, the metrics a resumed run
will log again dropped). The loop (``loop.py``) calls these; nothing here trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgedistill import distributed as distmod
from edgedistill.errors import EdgeDistillError
from edgedistill.rundir import RunDir
from edgedistill.utils import atomic_path, atomic_write_text, check_free_space, disk_errors

if TYPE_CHECKING:  # loop.py imports this module
    from edgedistill.train.loop import LoopSettings, Task

__all__ = ["before_first_step", "check_disk", "truncate_metrics", "save_checkpoint", "load_checkpoint"]


def before_first_step(run: RunDir, settings: LoopSettings, info: distmod.DistInfo, trainable: nn.Module,
                      optimizer: torch.optim.Optimizer, resumed_at: int | None, stop_at: int, total_steps: int) -> None:
    """What must hold before any work: something left to train (a resume), room on the disk;
    the metrics a resumed run will log again dropped (a new run's: all)."""
    if resumed_at is not None and resumed_at >= min(stop_at, total_steps):
        # nothing left to train: say so rather than rewrite the run's summary with no metrics
        limit = (f"max_steps={settings.max_steps}" if settings.max_steps and stop_at < total_steps
                 else f"all {settings.epochs} epochs")
        raise EdgeDistillError(f"nothing to resume: {run.path} already reached step {resumed_at} ({limit}); "
                               "raise the epochs or max_steps with --set to train further")
    if info.is_main:
        check_disk(run, trainable, optimizer)
        if resumed_at is not None:
            truncate_metrics(run.metrics, resumed_at)
        else:  # a new run in the folder of one killed before its first checkpoint
            run.metrics.unlink(missing_ok=True)


def check_disk(run: RunDir, trainable: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Room for two checkpoints (the atomic write keeps the old one until the new one is
    complete) and the saved weights, before the first step rather than after an epoch."""
    weights = sum(p.numel() * p.element_size() for p in trainable.parameters())
    checkpoint = weights * (1 + len(optimizer.param_groups[0]["betas"]))  # AdamW: two moments
    check_free_space(run.path, 2 * checkpoint + weights + (1 << 20), f"the checkpoints of {run.path}")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (the checkpoint resumed from): the steps logged after it
    are trained again and logged again. A half-written last line (a kill) is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def save_checkpoint(path: Path, trainable: nn.Module, optimizer: torch.optim.Optimizer, task: Task, step: int,
                    steps_per_epoch: int, total_steps: int, device: torch.device, seconds: float = 0.0) -> None:
    """Everything a resume needs, written atomically (a crash leaves the previous one). Saved
    through a file object: on a full disk torch then raises ENOSPC, not "unexpected pos"."""
    state = {
        "model": trainable.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": {},  # bf16 autocast needs no loss scaler; kept for the format
        "task": task.extra_state(),
        "step": step,
        "epoch": step // steps_per_epoch,
        "total_steps": total_steps,
        "seconds": float(seconds),  # training wall-clock so far: a resumed run keeps its max_seconds budget
        "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
    }
    with atomic_path(path) as tmp, disk_errors(path, "cannot save the checkpoint"):
        with open(tmp, "wb") as handle:
            torch.save(state, handle)


def load_checkpoint(path: Path, trainable: nn.Module, optimizer: torch.optim.Optimizer, task: Task,
                    device: torch.device) -> tuple[int, float]:
    """Restore model, optimizer, task state and RNG; returns the optimizer step reached and the
    training seconds spent so far."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    trainable.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    task.load_extra_state(state.get("task", {}))
    torch.set_rng_state(state["rng"]["cpu"])
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return int(state["step"]), float(state.get("seconds", 0.0))
